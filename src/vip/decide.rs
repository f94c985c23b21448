//! The decisions of one VIP, with no I/O and no clock of its own: [`VipClaim`] takes inputs
//! (the want derived from HA's role, netlink news and results, ARP seen as the VIP, timers)
//! through [`VipClaim::handle`] and answers with [`Output`]s (look the link up, add, delete,
//! check, announce, report) for the worker in [`super::manager`] to carry out. The next
//! deadline comes from [`VipClaim::poll_timeout`] (quinn-proto's shape). So every ordering
//! rule is tested without root or a network namespace.
//!
//! Protocol with the shell: a netlink output (`LookUpLink`, `AddAddress`, `DeleteAddress`,
//! `CheckPresent`) is always the last output of a `handle` call, and its result is the next
//! input, except that a newer [`Input::Want`] may come first (a role that changed during the
//! netlink call). Other inputs come only while [`VipClaim::is_idle`].
//!
//! Invariants:
//! - the newest want wins; one that arrives during a netlink call is applied right after it,
//!   and a claim it supersedes announces nothing;
//! - `held` is true exactly while the address is on the interface by our doing; no
//!   announcement, defence or refresh check follows a release or a yield;
//! - while the VIP is wanted it is added back when someone removes it, claimed again when
//!   the link returns, and defended after [`DEFEND_HOLDOFF`]; failures are retried with
//!   [`Backoff`].

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::arp::{self, ArpSeen};
use super::claim::{put_off_if_late, Backoff, Burst, Defender, Want, YIELD_LINGER};
use super::netlink::LinkInfo;

/// How long a worker waits after a conflicting ARP before it defends: in a planned handoff
/// the new owner announces before the old one releases, and an instant defence would pull
/// traffic back to the node that is about to let go; for the same reason the conflict is
/// only reported if the VIP is still held when the hold-off ends.
pub const DEFEND_HOLDOFF: Duration = Duration::from_secs(1);

/// What happened, for the VIP's decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// HA's newest role, as a want; `at` is when HA decided (for the claim latency).
    Want { want: Want, at: Instant },
    /// Result of [`Output::LookUpLink`]; `Err` is the message to report.
    LinkFound(Result<Option<LinkInfo>, String>),
    /// Result of [`Output::AddAddress`].
    Added(Result<(), String>),
    /// Result of [`Output::DeleteAddress`]: whether the address was there.
    Deleted(Result<bool, String>),
    /// Result of [`Output::CheckPresent`].
    Checked(Result<bool, String>),
    /// Netlink news: an address went from an interface.
    AddressRemoved { index: u32, addr: IpAddr },
    /// Netlink news: a link appeared or changed.
    Link(LinkInfo),
    /// Netlink news: a link was deleted.
    LinkRemoved { index: u32 },
    /// Netlink news were lost: check everything again.
    Resync,
    /// An ARP frame sent as the VIP, on interface `ifindex`.
    Arp { seen: ArpSeen, ifindex: u32 },
    /// The deadline from [`VipClaim::poll_timeout`] passed.
    Timer,
    /// The daemon stops: release what is held.
    Shutdown,
}

/// What the worker must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    LookUpLink,
    AddAddress {
        index: u32,
    },
    DeleteAddress {
        index: u32,
    },
    CheckPresent {
        index: u32,
    },
    /// One gratuitous ARP (or unsolicited NA) from this link.
    Announce(LinkInfo),
    Report(Report),
}

/// What the worker logs, counts, shows and publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The address is on and its first announcement just went out; `at` is when the want
    /// arrived, `newly` whether it was not held before.
    Claimed { at: Instant, newly: bool },
    /// The release finished. `leftover`: removed at start-up (an earlier run's address).
    Released {
        was_held: bool,
        existed: bool,
        leftover: bool,
        shutdown: bool,
    },
    /// A claim or release failed and is retried in `retry_in`. `first`: not the same
    /// message as the last failure. `held`: the address is (still) held.
    Failed {
        what: &'static str,
        msg: String,
        retry_in: Duration,
        first: bool,
        held: bool,
    },
    /// A claim or release worked; `recovered` after a failure.
    Succeeded { recovered: bool },
    /// The link lost (`false`) or regained its carrier.
    Carrier { up: bool },
    /// The interface was deleted while the VIP was held.
    LinkLost,
    /// Not serving any more, the peer is: silent now, removed after [`YIELD_LINGER`].
    Yielding,
    /// Someone removed the address while it was held: it is added back.
    RemovedWhileHeld,
    /// The link came up (or moved): claimed and announced again.
    LinkUp,
    /// The refresh check found the address gone: it is added back.
    Vanished,
    /// The refresh check failed (the address is assumed still there).
    CheckFailed(String),
    /// Another MAC announced the VIP while it is held: HA is told at once, so it can ask the
    /// peer on every path before the hold-off ends and the address is defended.
    Rival { rival: [u8; 6] },
    /// Another MAC still sends ARP as the VIP after the hold-off.
    Conflict { rival: [u8; 6], own_mac: [u8; 6] },
    /// Announcing again against a conflict (rate-limited).
    Defending,
}

/// The netlink call in flight, and what to do with its result.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Idle,
    Claim {
        at: Instant,
    },
    Release {
        was_held: bool,
        leftover: bool,
        shutdown: bool,
    },
    Check,
}

/// The timers of one VIP, in one table.
#[derive(Debug, Clone, Default)]
struct Timers {
    burst: Burst,
    retry: Option<Instant>,
    refresh: Option<Instant>,
    defend: Option<Instant>,
    /// Yielded to the serving peer: the address goes then.
    release: Option<Instant>,
}

impl Timers {
    fn next(&self) -> Option<Instant> {
        [
            self.burst.due(),
            self.retry,
            self.refresh,
            self.defend,
            self.release,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Static settings of one VIP.
#[derive(Debug, Clone)]
pub struct VipSettings {
    pub net: IpNet,
    pub interface: String,
    pub garp_count: u32,
    pub garp_interval: Duration,
    pub garp_refresh: Option<Duration>,
}

/// One VIP's state and decisions.
#[derive(Debug)]
pub struct VipClaim {
    s: VipSettings,
    /// The newest want; `applied` is false while it waits for a netlink call to finish.
    want: Want,
    want_at: Instant,
    applied: bool,
    /// The want last applied is Hold.
    want_hold: bool,
    /// The interface as last seen; None = not found yet (or gone).
    link: Option<LinkInfo>,
    held: bool,
    /// No want applied yet: a release now is the crash-leftover clean-up.
    startup: bool,
    no_carrier: bool,
    op: Op,
    timers: Timers,
    backoff: Backoff,
    defender: Defender,
    /// The MAC that started the defence hold-off.
    rival: Option<[u8; 6]>,
    error: Option<String>,
}

impl VipClaim {
    pub fn new(s: VipSettings, now: Instant) -> VipClaim {
        VipClaim {
            s,
            want: Want::Release,
            want_at: now,
            applied: true,
            want_hold: false,
            link: None,
            held: false,
            startup: true,
            no_carrier: false,
            op: Op::Idle,
            timers: Timers::default(),
            backoff: Backoff::default(),
            defender: Defender::default(),
            rival: None,
            error: None,
        }
    }

    /// No netlink call in flight: any input may come.
    pub fn is_idle(&self) -> bool {
        self.op == Op::Idle
    }

    /// The address is on the interface by our doing.
    pub fn held(&self) -> bool {
        self.held
    }

    /// The interface as last seen.
    pub fn link(&self) -> Option<&LinkInfo> {
        self.link.as_ref()
    }

    /// When [`Input::Timer`] is due (only meaningful while idle).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Want { want, at } => {
                self.want = want;
                self.want_at = at;
                self.applied = false;
                if self.is_idle() {
                    self.apply_want(now, &mut out);
                }
                return out;
            }
            Input::LinkFound(r) => self.on_link_found(r, now, &mut out),
            Input::Added(r) => self.on_added(r, now, &mut out),
            Input::Deleted(r) => self.on_deleted(r, now, &mut out),
            Input::Checked(r) => self.on_checked(r, now, &mut out),
            Input::AddressRemoved { index, addr } => {
                let ours = self.link.as_ref().is_some_and(|l| l.index == index);
                if self.held && ours && addr == self.s.net.addr() {
                    if self.want_hold {
                        out.push(Output::Report(Report::RemovedWhileHeld));
                        self.held = false;
                        self.start_claim(now, &mut out);
                    } else {
                        // Removed by someone else while yielding: it is gone either way.
                        self.start_release(false, &mut out);
                    }
                }
            }
            Input::Link(info) if info.name == self.s.interface => {
                self.note_carrier(&info, &mut out);
                let old = self.link.replace(info.clone());
                let came_up = info.up && !old.as_ref().is_some_and(|o| o.up);
                let moved = old.as_ref().is_some_and(|o| o.index != info.index);
                if self.want_hold && (came_up || moved || self.timers.retry.is_some()) {
                    out.push(Output::Report(Report::LinkUp));
                    self.held = false;
                    self.start_claim(now, &mut out);
                }
            }
            Input::Link(_) => {}
            Input::LinkRemoved { index } => {
                if self.link.as_ref().is_some_and(|l| l.index == index) {
                    self.link = None;
                    if self.held {
                        self.held = false;
                        self.timers.burst.cancel();
                        out.push(Output::Report(Report::LinkLost));
                        let msg = format!(
                            "interface {:?} of VIP {} was removed; it is claimed again when the interface returns",
                            self.s.interface, self.s.net
                        );
                        self.fail("claim", msg, now, &mut out);
                    }
                }
            }
            Input::Resync => {
                if self.want_hold {
                    self.link = None;
                    self.start_claim(now, &mut out);
                }
            }
            Input::Arp { seen, ifindex } => self.on_arp(seen, ifindex, now, &mut out),
            Input::Timer => self.on_timer(now, &mut out),
            Input::Shutdown => {
                if self.want_hold || self.held {
                    self.start_release(true, &mut out);
                }
            }
        }
        if self.is_idle() && !self.applied {
            self.apply_want(now, &mut out);
        }
        out
    }

    fn apply_want(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.applied = true;
        self.timers.retry = None;
        self.timers.release = None;
        match self.want {
            Want::Hold => {
                self.want_hold = true;
                self.start_claim(self.want_at, out);
            }
            Want::Yield if self.held => {
                self.want_hold = false;
                self.fall_silent();
                self.timers.release = Some(now + YIELD_LINGER);
                out.push(Output::Report(Report::Yielding));
            }
            Want::Release | Want::Yield => {
                self.want_hold = false;
                self.start_release(false, out);
            }
        }
        self.startup = false;
    }

    /// No more announcements, defences or refresh checks.
    fn fall_silent(&mut self) {
        self.timers.burst.cancel();
        self.timers.refresh = None;
        self.timers.defend = None;
        self.rival = None;
    }

    fn start_claim(&mut self, at: Instant, out: &mut Vec<Output>) {
        self.op = Op::Claim { at };
        match &self.link {
            Some(l) => out.push(Output::AddAddress { index: l.index }),
            None => out.push(Output::LookUpLink),
        }
    }

    fn start_release(&mut self, shutdown: bool, out: &mut Vec<Output>) {
        self.fall_silent();
        self.timers.release = None;
        let was_held = self.held;
        // Before the netlink call: the resulting RTM_DELADDR must not look like an intruder.
        self.held = false;
        self.op = Op::Release {
            was_held,
            leftover: self.startup,
            shutdown,
        };
        match &self.link {
            Some(l) => out.push(Output::DeleteAddress { index: l.index }),
            None => out.push(Output::LookUpLink),
        }
    }

    fn on_link_found(
        &mut self,
        r: Result<Option<LinkInfo>, String>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let op = std::mem::replace(&mut self.op, Op::Idle);
        let what = match op {
            Op::Claim { .. } => "claim",
            Op::Release { .. } => "release",
            _ => return,
        };
        let link = match r {
            Ok(l) => l,
            Err(msg) => return self.fail(what, msg, now, out),
        };
        if let Some(info) = &link {
            self.note_carrier(info, out);
        }
        // Cached, so a later claim skips the lookup (event → GARP latency).
        self.link = link.clone();
        match (op, link) {
            (Op::Claim { at }, Some(l)) => {
                self.op = Op::Claim { at };
                out.push(Output::AddAddress { index: l.index });
            }
            (Op::Claim { .. }, None) => {
                let msg = format!(
                    "interface {:?} not found for VIP {}",
                    self.s.interface, self.s.net
                );
                self.fail("claim", msg, now, out);
            }
            (op @ Op::Release { .. }, Some(l)) => {
                self.op = op;
                out.push(Output::DeleteAddress { index: l.index });
            }
            // No interface, no address: released.
            (op @ Op::Release { .. }, None) => self.finish_release(op, false, out),
            _ => {}
        }
    }

    fn on_added(&mut self, r: Result<(), String>, now: Instant, out: &mut Vec<Output>) {
        let Op::Claim { at } = std::mem::replace(&mut self.op, Op::Idle) else {
            return;
        };
        if let Err(msg) = r {
            // A stale ifindex (interface re-created) looks like ENODEV: look it up afresh.
            self.link = None;
            return self.fail("claim", msg, now, out);
        }
        let was_held = self.held;
        self.held = true;
        if self.want != Want::Hold {
            // Superseded while netlink was busy: announce nothing; the newer want runs next
            // and removes the address again.
            return;
        }
        let Some(link) = self.link.clone() else {
            return;
        };
        out.push(Output::Announce(link));
        self.timers.burst = Burst::start(now, self.s.garp_count, self.s.garp_interval);
        self.schedule_refresh(now);
        self.succeeded(out);
        out.push(Output::Report(Report::Claimed {
            at,
            newly: !was_held,
        }));
    }

    fn on_deleted(&mut self, r: Result<bool, String>, now: Instant, out: &mut Vec<Output>) {
        let op = std::mem::replace(&mut self.op, Op::Idle);
        if !matches!(op, Op::Release { .. }) {
            return;
        }
        match r {
            Ok(existed) => self.finish_release(op, existed, out),
            Err(msg) => self.fail("release", msg, now, out),
        }
    }

    fn finish_release(&mut self, op: Op, existed: bool, out: &mut Vec<Output>) {
        let Op::Release {
            was_held,
            leftover,
            shutdown,
        } = op
        else {
            return;
        };
        self.succeeded(out);
        out.push(Output::Report(Report::Released {
            was_held,
            existed,
            leftover: leftover && existed,
            shutdown,
        }));
    }

    fn on_checked(&mut self, r: Result<bool, String>, now: Instant, out: &mut Vec<Output>) {
        if std::mem::replace(&mut self.op, Op::Idle) != Op::Check {
            return;
        }
        match r {
            // Not if HA let go during the check: no announcement after a release.
            Ok(true) if self.want == Want::Hold => {
                if let Some(l) = self.link.clone() {
                    out.push(Output::Announce(l));
                }
            }
            Ok(true) => {}
            Ok(false) => {
                out.push(Output::Report(Report::Vanished));
                self.start_claim(now, out);
            }
            Err(msg) => out.push(Output::Report(Report::CheckFailed(msg))),
        }
    }

    fn on_arp(&mut self, seen: ArpSeen, ifindex: u32, now: Instant, out: &mut Vec<Output>) {
        let Some(link) = &self.link else { return };
        let vip = match self.s.net.addr() {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        if !self.held
            || !self.want_hold
            || ifindex != link.index
            || !arp::is_conflict(&seen, vip, link.mac)
        {
            return;
        }
        if self.timers.defend.is_none() {
            self.timers.defend = Some(now + DEFEND_HOLDOFF);
            self.rival = Some(seen.sender_mac);
            out.push(Output::Report(Report::Rival {
                rival: seen.sender_mac,
            }));
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.timers.retry.is_some_and(|t| now >= t) {
            self.timers.retry = None;
            if self.want_hold {
                self.start_claim(now, out);
            } else {
                self.start_release(false, out);
            }
            return;
        }
        if self.timers.release.is_some_and(|t| now >= t) {
            self.start_release(false, out);
            return;
        }
        let link = match self.link.clone() {
            Some(l) if self.held && self.want_hold => l,
            // Nothing to announce (a retry, which claims and starts a new burst, or a link
            // returning takes over); a timer left due here would fire again at once.
            _ => {
                self.fall_silent();
                return;
            }
        };
        if self.timers.burst.fire(now) {
            out.push(Output::Announce(link.clone()));
        }
        if self.timers.defend.is_some_and(|t| now >= t) {
            self.timers.defend = None;
            if let Some(rival) = self.rival.take() {
                out.push(Output::Report(Report::Conflict {
                    rival,
                    own_mac: link.mac,
                }));
            }
            if self.defender.on_conflict(now) {
                out.push(Output::Report(Report::Defending));
                out.push(Output::Announce(link.clone()));
            }
        }
        if let Some(t) = self.timers.refresh.filter(|t| now >= *t) {
            if let Some(later) = put_off_if_late(t, now) {
                self.timers.refresh = Some(later);
                return;
            }
            self.schedule_refresh(now);
            // The periodic check doubles as a safety net for a missed RTM_DELADDR.
            self.op = Op::Check;
            out.push(Output::CheckPresent { index: link.index });
        }
    }

    fn schedule_refresh(&mut self, from: Instant) {
        self.timers.refresh = self.s.garp_refresh.map(|r| from + r);
    }

    /// A VIP link without carrier means this node cannot reach its clients (reported on the
    /// change only; the worker makes it a health fault so HA moves the service).
    fn note_carrier(&mut self, info: &LinkInfo, out: &mut Vec<Output>) {
        let lost = !info.up;
        if lost != self.no_carrier {
            self.no_carrier = lost;
            out.push(Output::Report(Report::Carrier { up: !lost }));
        }
    }

    fn fail(&mut self, what: &'static str, msg: String, now: Instant, out: &mut Vec<Output>) {
        let retry_in = self.backoff.next_delay();
        self.timers.retry = Some(now + retry_in);
        let first = self.error.as_deref() != Some(msg.as_str());
        self.error = Some(msg.clone());
        out.push(Output::Report(Report::Failed {
            what,
            msg,
            retry_in,
            first,
            held: self.held,
        }));
    }

    fn succeeded(&mut self, out: &mut Vec<Output>) {
        self.backoff.reset();
        self.timers.retry = None;
        let recovered = self.error.take().is_some();
        out.push(Output::Report(Report::Succeeded { recovered }));
    }
}

#[cfg(test)]
mod tests;

//! The decisions of one VIP as plain data, no sockets or clocks of their own (time is passed
//! in), so the ordering rules are tested directly:
//!
//! - [`Want`]: what the node wants for its VIPs, derived from HA's latest
//!   [`ServiceRole`] (the watch is the latest-wins mailbox: a burst of flapping transitions
//!   costs one netlink call and ends in the final state).
//! - [`Burst`]: the announcements of one claim: the first at once, the rest `interval` apart.
//!   The worker keeps serving its mailbox between them (a release never waits behind a burst)
//!   and cancels the rest when it releases, so no announcement follows a release.
//! - [`Backoff`]: retry spacing after a failed claim or release.
//! - [`Defender`]: RFC 5227 defence, at most one announcement per `DEFEND_INTERVAL`.

use std::time::{Duration, Instant};

use crate::ha::role::ServiceRole;

/// What the node wants for one VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Hold,
    Release,
    /// Release because the peer serves now: stop announcing at once, remove the address
    /// [`YIELD_LINGER`] later.
    Yield,
}

/// How long a VIP handed to a serving peer stays on the interface, unannounced. Clients
/// that still send to this node's MAC (a query in flight, or one that followed the last ARP
/// this node's kernel sent with the VIP as sender, e.g. answering the queries that queued
/// while the process was stopped) are answered here until the peer's announcement, which
/// goes out when it hears this node let go, has moved them. Removing at once lost such a
/// query (1 run in 8 of the SIGCONT e2e test).
pub const YIELD_LINGER: Duration = Duration::from_millis(250);

impl Want {
    /// Only a serving node holds the VIP; one that stops serving because its peer serves
    /// now yields it (see [`Want::Yield`]), otherwise it releases it at once.
    pub fn for_role(role: &ServiceRole) -> Want {
        if role.serves() {
            Want::Hold
        } else if role.yields_to_peer() {
            Want::Yield
        } else {
            Want::Release
        }
    }
}

/// An announcement this late means the process was not running when it was due (SIGSTOP,
/// a stall): the peer may have taken the VIP meanwhile, and HA settles that within a
/// heartbeat of resuming. Announcing at once would pull clients to a node that is about to
/// let go (one lost query after SIGCONT in the e2e test), so it waits this long first; a
/// release meanwhile cancels it.
pub const LATE: Duration = Duration::from_millis(300);

/// The announcements of one claim (or re-announcement).
/// For an announcement due at `due` and found at `now`: the new time when it is more than
/// [`LATE`] overdue (the burst's and the periodic re-announcement's rule alike).
pub fn put_off_if_late(due: Instant, now: Instant) -> Option<Instant> {
    (now.saturating_duration_since(due) > LATE).then(|| now + LATE)
}

#[derive(Debug, Clone, Default)]
pub struct Burst {
    remaining: u32,
    next_at: Option<Instant>,
    interval: Duration,
}

impl Burst {
    /// Starts a burst of `count` whose first announcement the caller sends now.
    pub fn start(now: Instant, count: u32, interval: Duration) -> Burst {
        let remaining = count.saturating_sub(1);
        Burst {
            remaining,
            next_at: (remaining > 0).then(|| now + interval),
            interval,
        }
    }

    /// When the next announcement is due, if any remain.
    pub fn due(&self) -> Option<Instant> {
        self.next_at
    }

    /// At `now`: should an announcement go out? Advances the schedule when it does.
    /// One overdue by more than [`LATE`] is put off by `LATE` instead (see there).
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.next_at {
            Some(t) if now >= t && self.remaining > 0 => {
                if let Some(later) = put_off_if_late(t, now) {
                    self.next_at = Some(later);
                    return false;
                }
                self.remaining -= 1;
                self.next_at = (self.remaining > 0).then(|| t + self.interval);
                true
            }
            _ => false,
        }
    }

    pub fn cancel(&mut self) {
        self.remaining = 0;
        self.next_at = None;
    }
}

/// Exponential retry spacing: 200 ms doubling up to 30 s; reset after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(30);

    /// The delay before the next retry; later calls return longer delays.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// RFC 5227 section 2.4 (b): defend at most once per this interval, so two hosts that both
/// believe they own the address do not flood the segment.
pub const DEFEND_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Defender {
    last: Option<Instant>,
}

impl Defender {
    /// A conflicting ARP arrived at `now`: announce (true) or stay quiet (false)?
    pub fn on_conflict(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < DEFEND_INTERVAL => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_three_sends_two_more_spaced_by_the_interval() {
        let t = Instant::now();
        let iv = Duration::from_millis(400);
        let mut b = Burst::start(t, 3, iv);
        assert_eq!(b.due(), Some(t + iv));
        assert!(!b.fire(t + iv / 2), "not yet due");
        assert!(b.fire(t + iv));
        assert_eq!(
            b.due(),
            Some(t + 2 * iv),
            "spacing from the schedule, not from lateness"
        );
        assert!(b.fire(t + 2 * iv + Duration::from_millis(5)));
        assert_eq!(b.due(), None);
        assert!(!b.fire(t + 10 * iv));
    }

    #[test]
    fn an_announcement_found_long_overdue_waits_a_moment_instead_of_going_out_blindly() {
        let t = Instant::now();
        let iv = Duration::from_secs(1);
        let mut b = Burst::start(t, 3, iv);
        // Stopped for 2 s: the second announcement is 1 s late when the process resumes.
        let resumed = t + 2 * iv;
        assert!(!b.fire(resumed), "fired blindly after a stop");
        assert_eq!(b.due(), Some(resumed + LATE));
        assert!(
            b.fire(resumed + LATE),
            "still held: it goes out after the wait"
        );
        // Slightly late (a busy machine) is not a stop: it fires.
        let mut b = Burst::start(t, 2, iv);
        assert!(b.fire(t + iv + LATE / 2));
    }

    #[test]
    fn a_burst_of_one_has_nothing_left_and_a_cancelled_burst_sends_nothing() {
        let t = Instant::now();
        let b = Burst::start(t, 1, Duration::from_secs(1));
        assert_eq!(b.due(), None);
        let mut b = Burst::start(t, 5, Duration::from_secs(1));
        b.cancel();
        assert_eq!(b.due(), None);
        assert!(!b.fire(t + Duration::from_secs(2)));
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(400));
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Backoff::MAX);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }

    #[test]
    fn defence_is_rate_limited_to_one_per_interval() {
        let t = Instant::now();
        let mut d = Defender::default();
        assert!(d.on_conflict(t));
        assert!(!d.on_conflict(t + Duration::from_secs(1)));
        assert!(d.on_conflict(t + DEFEND_INTERVAL));
    }

    #[test]
    fn only_a_serving_role_holds_the_vip_and_letting_go_to_a_serving_peer_yields() {
        use crate::ha::HaState;
        let all = [
            HaState::Standby,
            HaState::Active,
            HaState::Syncing,
            HaState::Fault,
        ];
        for peer in [None, Some(HaState::Standby), Some(HaState::Active)] {
            let mut r = ServiceRole::standalone();
            r.peer_state = peer;
            assert_eq!(Want::for_role(&r), Want::Hold);
        }
        for s in all.into_iter().filter(|s| *s != HaState::Active) {
            let mut r = ServiceRole::undecided();
            r.state = s;
            assert_eq!(Want::for_role(&r), Want::Release);
            r.peer_state = Some(HaState::Standby);
            assert_eq!(Want::for_role(&r), Want::Release);
            r.peer_state = Some(HaState::Active);
            assert_eq!(Want::for_role(&r), Want::Yield);
        }
    }
}

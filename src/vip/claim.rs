//! The decisions of one VIP as plain data, no sockets or clocks of their own (time is passed
//! in), so the ordering rules are tested directly:
//!
//! - [`Desired`]: a latest-wins mailbox between events and the VIP's worker. Events set what
//!   the node *wants* (hold or release); the worker takes only the newest want, so a burst of
//!   flapping `ha.failover` events costs one netlink call and ends in the final state. Every
//!   want carries the instant its event arrived, for the event → first GARP latency.
//! - [`Burst`]: the announcements of one claim: the first at once, the rest `interval` apart.
//!   The worker keeps serving its mailbox between them (a release never waits behind a burst)
//!   and cancels the rest when it releases, so no announcement follows a release.
//! - [`Backoff`]: retry spacing after a failed claim or release.
//! - [`Defender`]: RFC 5227 defence, at most one announcement per `DEFEND_INTERVAL`.

use std::time::{Duration, Instant};

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
    /// `ha.failover` → want: only ACTIVE holds the VIP; a node that stops being ACTIVE
    /// while its peer is ACTIVE yields it (see [`Want::Yield`]).
    pub fn for_ha_state(new_state: &str, peer_state: Option<&str>) -> Want {
        if new_state == "ACTIVE" {
            Want::Hold
        } else if peer_state == Some("ACTIVE") {
            Want::Yield
        } else {
            Want::Release
        }
    }
}

/// Latest-wins mailbox. A fresh one holds a pending `Release`: at start-up the VIP is
/// removed (a leftover from a crash) unless a `Hold` arrives before the worker gets to it.
#[derive(Debug)]
pub struct Desired {
    want: Want,
    at: Instant,
    /// Bumped by every `set`; `taken` is the last value the worker took.
    seq: u64,
    taken: u64,
}

impl Desired {
    pub fn new(now: Instant) -> Desired {
        Desired {
            want: Want::Release,
            at: now,
            seq: 1,
            taken: 0,
        }
    }

    /// Records the newest want. Returns true when the worker has something new to take.
    pub fn set(&mut self, want: Want, at: Instant) -> bool {
        self.want = want;
        self.at = at;
        self.seq += 1;
        true
    }

    /// The newest want not yet taken, with the instant its event arrived.
    pub fn take(&mut self) -> Option<(Want, Instant)> {
        if self.taken == self.seq {
            return None;
        }
        self.taken = self.seq;
        Some((self.want, self.at))
    }

    /// The newest want, taken or not.
    pub fn latest(&self) -> Want {
        self.want
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
    fn a_fresh_mailbox_asks_to_release_a_leftover() {
        let t = Instant::now();
        let mut d = Desired::new(t);
        assert_eq!(d.take(), Some((Want::Release, t)));
        assert_eq!(d.take(), None);
    }

    #[test]
    fn a_hold_before_the_first_take_skips_the_start_up_release() {
        let t = Instant::now();
        let mut d = Desired::new(t);
        let t1 = t + Duration::from_millis(1);
        d.set(Want::Hold, t1);
        assert_eq!(d.take(), Some((Want::Hold, t1)));
        assert_eq!(d.take(), None);
    }

    #[test]
    fn flapping_coalesces_to_the_final_state() {
        let t = Instant::now();
        let mut d = Desired::new(t);
        d.take();
        for i in 0..10u64 {
            let w = if i % 2 == 0 {
                Want::Hold
            } else {
                Want::Release
            };
            d.set(w, t + Duration::from_millis(i));
        }
        assert_eq!(
            d.take(),
            Some((Want::Release, t + Duration::from_millis(9)))
        );
        assert_eq!(d.take(), None);
        d.set(Want::Hold, t);
        d.set(Want::Hold, t);
        assert_eq!(d.take().map(|x| x.0), Some(Want::Hold));
        assert_eq!(d.latest(), Want::Hold);
    }

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
    fn only_active_holds_the_vip_and_letting_go_to_an_active_peer_yields() {
        for peer in [None, Some("STANDBY"), Some("ACTIVE")] {
            assert_eq!(Want::for_ha_state("ACTIVE", peer), Want::Hold);
        }
        for s in ["STANDBY", "SYNCING", "FAULT", ""] {
            assert_eq!(Want::for_ha_state(s, None), Want::Release);
            assert_eq!(Want::for_ha_state(s, Some("STANDBY")), Want::Release);
            assert_eq!(Want::for_ha_state(s, Some("ACTIVE")), Want::Yield);
        }
    }
}

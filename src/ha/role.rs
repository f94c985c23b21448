//! The service role: what HA tells the parts of this node that act on "do I serve?" (the
//! floating IP today), as typed data on a `tokio::sync::watch`.
//!
//! A watch holds one value and every reader sees the newest: a burst of transitions can
//! never be dropped by a full queue or delivered out of order, and a reader that was busy
//! skips straight to the final state. That is the contract the VIP needs (keepalived adds the
//! address by a direct call before it runs any notify script); the event bus, which may drop
//! for a slow subscriber, only tells the outside world (scripts, webhooks, SSE).
//!
//! The HA node task is the only writer: it sends on every `ha.failover` (a transition, or a
//! re-announce that keeps ACTIVE), and standalone the daemon sends [`ServiceRole::standalone`]
//! once. Readers get it through [`watch::Receiver`] and act on `changed()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::HaState;

/// One decision of HA about this node's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRole {
    pub state: HaState,
    /// HA's epoch when it decided (raised by every takeover).
    pub epoch: u64,
    /// The peer's state as this node knew it then; `Some(Active)` while this node is not
    /// ACTIVE means it let go *to a serving peer* (a handoff, or stepping down to a higher
    /// epoch): the VIP then stops announcing at once and lingers briefly (see
    /// [`crate::vip::claim::YIELD_LINGER`]) instead of going at once.
    pub peer_state: Option<HaState>,
    /// Bumped when HA stays ACTIVE but wants the VIP claimed and announced again (after a
    /// split brain settled in this node's favour): a new value with the same `state`.
    pub reannounce: u64,
    /// When HA decided this, for the decision → first announcement latency.
    pub since: Instant,
    /// ACTIVE but fenced after a stall (see `ha::machine::fence`): hold no VIP until HA has
    /// fresh news.
    pub fenced: bool,
}

impl ServiceRole {
    /// Before HA has decided: not serving, peer unknown. A VIP left over from a crash is
    /// removed unless a serving role arrives first.
    pub fn undecided() -> ServiceRole {
        ServiceRole {
            state: HaState::Standby,
            epoch: 0,
            peer_state: None,
            reannounce: 0,
            since: Instant::now(),
            fenced: false,
        }
    }

    /// A node without HA always serves.
    pub fn standalone() -> ServiceRole {
        ServiceRole {
            state: HaState::Active,
            ..ServiceRole::undecided()
        }
    }

    pub fn serves(&self) -> bool {
        self.state.serves() && !self.fenced
    }

    /// Not serving because the peer now does (as opposed to no one serving).
    pub fn yields_to_peer(&self) -> bool {
        !self.serves() && self.peer_state == Some(HaState::Active)
    }
}

/// Until when (monotonic ms, [`crate::health::mono_ms`]) HA's own loop last confirmed that
/// this node serves. DHCP answers only while it holds: after a stall (SIGSTOP, a paused VM)
/// every thread resumes at once, and a DHCP task may run before the HA loop has noticed the
/// gap and fenced; the lease, renewed on every HA step for less than a failover timeout,
/// has run out by then. Cheap to clone and to check (one atomic load).
#[derive(Debug, Clone)]
pub struct ServeLease(Arc<AtomicU64>);

impl ServeLease {
    /// Standalone: always valid.
    pub fn always() -> ServeLease {
        ServeLease(Arc::new(AtomicU64::new(u64::MAX)))
    }
    /// Not valid until renewed.
    pub fn revoked() -> ServeLease {
        ServeLease(Arc::new(AtomicU64::new(0)))
    }
    pub fn renew(&self, until_ms: u64) {
        self.0.store(until_ms, Ordering::Relaxed);
    }
    pub fn revoke(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
    pub fn valid(&self) -> bool {
        let until = self.0.load(Ordering::Relaxed);
        until == u64::MAX || crate::health::mono_ms() < until
    }
}

/// The channel HA writes the role to; the receiver starts at [`ServiceRole::undecided`].
pub fn channel() -> (watch::Sender<ServiceRole>, watch::Receiver<ServiceRole>) {
    watch::channel(ServiceRole::undecided())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::mono_ms;

    #[test]
    fn a_serve_lease_holds_only_until_it_runs_out_unless_standalone() {
        assert!(ServeLease::always().valid());
        let l = ServeLease::revoked();
        assert!(!l.valid(), "not valid before HA renewed it");
        l.renew(mono_ms() + 60_000);
        assert!(l.valid());
        l.renew(mono_ms().saturating_sub(1));
        assert!(!l.valid(), "a lease that ran out during a stall");
        l.renew(mono_ms() + 60_000);
        l.revoke();
        assert!(!l.valid(), "fenced");
    }

    #[test]
    fn a_fenced_active_role_does_not_serve() {
        let r = ServiceRole {
            fenced: true,
            ..ServiceRole::standalone()
        };
        assert!(!r.serves());
        assert!(
            !r.yields_to_peer(),
            "fenced: the VIP goes at once, it is not handed over"
        );
    }
}

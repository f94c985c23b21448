//! Leases and their durable store (redb, group commit: durable before DHCPACK).
//!
//! This file holds the lease type every module shares and the replication hand-off between
//! the DHCP server (which must not send a DHCPACK before the standby has the lease) and HA
//! (which owns the peer link). The two meet only through [`Replication`], so DHCP knows
//! nothing of the peer protocol and HA nothing of DHCP packets.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub mod codec;
pub mod damaged;
pub mod fault;
pub mod index;
mod merge;
#[cfg(test)]
mod merge_tests;
mod migrate;
pub mod report;
pub mod space;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
mod writer;

pub use fault::StoreCondition;
pub use index::LeaseIndex;
pub use store::{LeaseStore, StoreError};

/// Where a lease is in its life. Released/expired/declined leases are kept (with their
/// state) so a peer that missed the change learns it in a bulk sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeaseState {
    Active,
    Released,
    Expired,
    /// Address declined by a client (RFC 2131 §4.3.3): held back until `expiry`.
    Declined,
    /// Address found in use on the wire by a host that is not its client (a probe was
    /// answered, or an ARP claimed it): held back until `expiry`. The record's `mac` is the
    /// host that answered, `start` when it was first seen, `updated_ms` the last time,
    /// `seen` how many times. Only the host that answered may still be given it.
    Conflict {
        seen: u32,
    },
}

impl LeaseState {
    /// An address no client but its holder may get while `expiry` is ahead.
    pub fn holds(self) -> bool {
        matches!(
            self,
            LeaseState::Active | LeaseState::Declined | LeaseState::Conflict { .. }
        )
    }

    pub fn is_conflict(self) -> bool {
        matches!(self, LeaseState::Conflict { .. })
    }
}

/// One address binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Hardware address (chaddr, first 6 bytes for Ethernet).
    pub mac: [u8; 6],
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    /// The subnet in CIDR form, e.g. "10.0.0.0/24". Shared: every lease of a subnet points at
    /// one copy (see [`LeaseIndex`]).
    pub subnet: Arc<str>,
    pub state: LeaseState,
    /// Unix seconds.
    pub start: u64,
    pub expiry: u64,
    /// Unix milliseconds of the last change; the newer side wins when two nodes merge (ties:
    /// [`Lease::merge_order`]). Each local change of an address moves it forward by at least
    /// 1 ms, so a change always wins over the version it replaced, on either node.
    pub updated_ms: u64,
    /// Relay agent information (option 82) as received, echoed on renewals.
    pub relay_info: Option<Vec<u8>>,
    /// The client classes the request that made this lease matched, in file order.
    pub classes: Vec<String>,
}

impl Lease {
    /// Which of two versions of one address wins a merge (`Greater`: `self` does). Both nodes
    /// of a pair must pick the same winner from the lease contents alone, or after a split
    /// brain (both ACTIVE, both changing an address in the same millisecond) each would keep
    /// its own version and the two views would differ for good. The order compares, in turn:
    ///
    /// 1. `updated_ms`: the newer change wins;
    /// 2. the state: `Active` > `Conflict` > `Declined` > `Expired` > `Released` (conflicts
    ///    by their count). An address a client may be using stays bound rather than being
    ///    handed out again (a duplicate address is worse than a lost release), and a declined
    ///    or conflicting one stays held;
    /// 3. then every other field, as a canonical encoding compared bytewise: the address
    ///    (network order), the MAC, the client-id, `expiry`, `start`, the hostname, the
    ///    subnet name, the relay information (an absent optional field sorts first), the
    ///    classes.
    ///
    /// It is a total order, and `Equal` only for identical leases, so merging is
    /// idempotent and its result does not depend on the order changes arrive in. The store's
    /// "one active address per client" rule uses it too, to pick which binding stays.
    pub fn merge_order(&self, other: &Lease) -> std::cmp::Ordering {
        fn key(l: &Lease) -> impl Ord + '_ {
            (
                l.updated_ms,
                state_rank(l.state),
                u32::from(l.ip),
                l.mac,
                l.client_id.as_deref(),
                l.expiry,
                l.start,
                l.hostname.as_deref().map(str::as_bytes),
                l.subnet.as_bytes(),
                l.relay_info.as_deref(),
                &l.classes,
            )
        }
        key(self).cmp(&key(other))
    }

    pub fn mac_string(&self) -> String {
        hex_colon(&self.mac)
    }

    /// The payload of a `lease.*` event for this lease.
    pub fn event(&self) -> crate::events::LeaseEvent {
        crate::events::LeaseEvent {
            ip: self.ip,
            mac: self.mac_string(),
            hostname: self.hostname.clone(),
            client_id: self.client_id.as_deref().map(hex_colon),
            subnet: self.subnet.to_string(),
            lease_start: self.start,
            lease_expiry: self.expiry,
            lease_duration: self.expiry.saturating_sub(self.start),
        }
    }
}

/// A state's weight in [`Lease::merge_order`] on a tie of `updated_ms`.
fn state_rank(s: LeaseState) -> (u8, u32) {
    match s {
        LeaseState::Released => (0, 0),
        LeaseState::Expired => (1, 0),
        LeaseState::Declined => (2, 0),
        LeaseState::Conflict { seen } => (3, seen),
        LeaseState::Active => (4, 0),
    }
}

/// Bytes as colon-separated hex: `01:aa:bb`.
pub fn hex_colon(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 3);
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 15)] as char);
    }
    s
}

/// A batch of lease changes waiting for the standby's acknowledgement.
pub struct ReplicationRequest {
    pub leases: Vec<Lease>,
    /// Completed with `Acked` when the peer acknowledged, `PeerDown` when there is no peer to
    /// wait for; dropped when the link went away meanwhile. Either way the DHCP server goes
    /// on; the wait is bounded.
    pub done: oneshot::Sender<Replicated>,
}

/// How one replication wait ended (the DHCP server counts these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    /// The standby merged the leases durably and said so before the reply left.
    Acked,
    /// No standby to wait for (peer down, not standby, or the link dropped during the wait):
    /// the changes reach it in the bulk sync at reconnect.
    PeerDown,
    /// The standby did not answer within `max_ack_delay`.
    TimedOut,
    /// The standby's lease store cannot write (it said so): not waited for; it catches up
    /// by bulk sync once its store heals.
    PeerStoreFailed,
}

impl Replicated {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Replicated::Acked => "acked",
            Replicated::PeerDown => "peer_down",
            Replicated::TimedOut => "timeout",
            Replicated::PeerStoreFailed => "peer_store_failed",
        }
    }
}

/// DHCP's end of the replication hand-off.
#[derive(Clone)]
pub struct Replication {
    tx: mpsc::Sender<ReplicationRequest>,
}

/// HA's end: it reads requests and completes `done` once the peer has acknowledged.
pub type ReplicationRx = mpsc::Receiver<ReplicationRequest>;

pub fn replication_channel(capacity: usize) -> (Replication, ReplicationRx) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Replication { tx }, rx)
}

impl Replication {
    /// Sends committed leases to the peer and waits at most `max_wait` in all (queueing
    /// towards HA included) for its ack. Never fails the caller: a DHCPACK must not be lost
    /// because the standby is slow; HA re-sends from the store's watermark on reconnect.
    pub async fn replicate(&self, leases: Vec<Lease>, max_wait: Duration) -> Replicated {
        let deadline = tokio::time::Instant::now() + max_wait;
        let (done, rx) = oneshot::channel();
        // A full queue means HA is behind: wait for room within the same bound rather than
        // let the ACK leave unreplicated at once.
        match tokio::time::timeout_at(deadline, self.tx.send(ReplicationRequest { leases, done }))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Replicated::PeerDown, // HA stopped
            Err(_) => return Replicated::TimedOut,
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Replicated::PeerDown,
            Err(_) => Replicated::TimedOut,
        }
    }
}

/// What HA needs from the lease store to replicate it: a sequence number that grows with
/// every local change, the changes after a sequence (bulk sync from a watermark), and a way
/// to merge the peer's leases (the greater in [`Lease::merge_order`] wins; a client is never
/// left with two active addresses in a subnet). Synchronous: redb is; callers on the runtime use `spawn_blocking`.
pub trait LeaseLog: Send + Sync + 'static {
    /// The sequence number of the newest local change (0 when empty).
    fn watermark(&self) -> u64;
    /// Up to `limit` changes with sequence > `seq`, oldest first, with their sequence numbers.
    fn changes_since(&self, seq: u64, limit: usize) -> Result<Vec<(u64, Lease)>, LeaseLogError>;
    /// Merges leases from the peer durably; returns those that changed the local view.
    fn apply_remote(&self, leases: &[Lease]) -> Result<Vec<Lease>, LeaseLogError>;
    /// The HA epoch of this node's last takeover as saved with the leases (0 for a new
    /// database), so a restarted node does not start again from epoch 0.
    fn saved_epoch(&self) -> u64 {
        0
    }
    /// Saves the HA epoch durably. Blocking: callers on the runtime use `spawn_blocking`.
    fn save_epoch(&self, _epoch: u64) -> Result<(), LeaseLogError> {
        Ok(())
    }
    /// Why the store cannot make changes durable now (`None`: it can). HA gives up the
    /// service while it cannot.
    fn failure(&self) -> Option<String> {
        None
    }

    /// [`apply_remote`](LeaseLog::apply_remote) for callers on the runtime; resolves to how
    /// many leases changed, once durable. By default it runs on the blocking pool when first
    /// polled; a store that can wait for its disk without a thread of its own overrides it.
    /// Either way merges take effect in the order of the calls when the futures are polled in
    /// that order (the store decides each merge in the call itself and queues its commit
    /// behind the earlier ones, so several can share one durable commit).
    fn apply_remote_async(self: Arc<Self>, leases: Vec<Lease>) -> RemoteMerge {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.apply_remote(&leases).map(|c| c.len())).await?
        })
    }
}

/// The future of [`LeaseLog::apply_remote_async`].
pub type RemoteMerge =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, LeaseLogError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum LeaseLogError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("lease store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, 50),
            mac: [0, 1, 2, 3, 4, 5],
            client_id: None,
            hostname: None,
            subnet: "10.0.0.0/24".into(),
            state: LeaseState::Active,
            start: 0,
            expiry: 3600,
            updated_ms: 1,
            relay_info: None,
            classes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn replicate_returns_true_once_acked() {
        let (rep, mut rx) = replication_channel(4);
        tokio::spawn(async move {
            let req = rx.recv().await.expect("request");
            assert_eq!(req.leases.len(), 1);
            let _ = req.done.send(Replicated::Acked);
        });
        assert_eq!(
            rep.replicate(vec![lease()], Duration::from_secs(1)).await,
            Replicated::Acked
        );
    }

    #[tokio::test]
    async fn replicate_reports_a_link_lost_during_the_wait_as_peer_down() {
        let (rep, mut rx) = replication_channel(4);
        tokio::spawn(async move { drop(rx.recv().await) });
        assert_eq!(
            rep.replicate(vec![lease()], Duration::from_secs(5)).await,
            Replicated::PeerDown
        );
    }

    #[tokio::test]
    async fn replicate_waits_for_room_in_a_full_queue_within_max_wait() {
        let (rep, _rx) = replication_channel(1);
        let first = rep.clone();
        // Fills the queue; nobody reads it.
        let _held =
            tokio::spawn(
                async move { first.replicate(vec![lease()], Duration::from_secs(5)).await },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = std::time::Instant::now();
        assert_eq!(
            rep.replicate(vec![lease()], Duration::from_millis(100))
                .await,
            Replicated::TimedOut
        );
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn replicate_gives_up_after_max_wait() {
        let (rep, mut rx) = replication_channel(4);
        let hold = tokio::spawn(async move { rx.recv().await.map(|r| std::mem::forget(r.done)) });
        let t = std::time::Instant::now();
        assert_eq!(
            rep.replicate(vec![lease()], Duration::from_millis(50))
                .await,
            Replicated::TimedOut
        );
        // Not before max_wait: giving up at once would release DHCPACKs unreplicated.
        assert!(
            (Duration::from_millis(50)..Duration::from_millis(500)).contains(&t.elapsed()),
            "{:?}",
            t.elapsed()
        );
        let _ = hold.await;
    }
}

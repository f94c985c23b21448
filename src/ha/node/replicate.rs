//! The node task's side of lease replication: one frame per group commit to the peer (its
//! DHCPACKs wait for its ack, whatever its role), and the peer's leases merged in a bulk sync.

use tokio::sync::mpsc;

use super::NodeTask;
use crate::ha::machine::Input;
use crate::ha::peer::Msg;
use crate::ha::sync::{self, Applied};
use crate::lease::{ReplicationRequest, ReplicationRx};

/// Most yields while gathering one frame's leases (each lets the woken DHCP tasks run).
const GATHER_ROUNDS: usize = 8;

/// The ACKs of one group commit wake together: let the others queue their leases too, so
/// they ride in the same frame (one frame, one merge and one fsync on the standby for the
/// burst). One yield let only about half of a 40-lease commit through; yield until a round
/// brings nothing new.
pub(super) async fn gather(
    first: ReplicationRequest,
    replication: &mut ReplicationRx,
) -> Vec<ReplicationRequest> {
    let mut batch = vec![first];
    let mut n = batch[0].leases.len();
    let mut rounds = 0;
    'gather: while n < sync::LIVE_BATCH && rounds < GATHER_ROUNDS {
        rounds += 1;
        tokio::task::yield_now().await;
        let before = batch.len();
        while n < sync::LIVE_BATCH {
            match replication.try_recv() {
                Ok(more) => {
                    n += more.leases.len();
                    batch.push(more);
                }
                _ => break,
            }
        }
        if batch.len() == before {
            break 'gather;
        }
    }
    batch
}

impl NodeTask {
    pub(super) fn on_replicate(&mut self, batch: Vec<crate::lease::ReplicationRequest>) {
        // Whatever the peer's role. A lease this node committed while ACTIVE can reach this
        // point after it handed the service over (the commit and its fsync were still under
        // way at the handoff): the new active node must take it now, not at the next bulk
        // sync, or it expires the client's lease there and replicates the expiry back over
        // the newer binding here (chaos seed 22). In a split brain both sides' changes meet
        // the same way, and the merge policy orders them alike.
        let connected = self.link.is_some() && self.m.peer().is_some_and(|p| !p.store_failed);
        match &self.link {
            Some(l) if connected => {
                let mut leases = Vec::with_capacity(batch.len());
                let mut done = Vec::with_capacity(batch.len());
                for r in batch {
                    leases.extend(r.leases);
                    done.push(r.done);
                }
                let id = self.pending.add(done, leases.clone());
                if let Err(mpsc::error::TrySendError::Full(frame)) =
                    l.tx.try_send(Msg::Leases { id, leases })
                {
                    // The writer is behind: queue the frame behind it rather than drop it
                    // (the standby would miss these leases until the next bulk sync). The
                    // DHCPACKs keep waiting, bounded by max_ack_delay; the send ends when
                    // the link does.
                    let tx = l.tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(frame).await;
                    });
                }
            }
            _ => {
                // No peer to wait for: the lease is durable here and goes out in the next
                // bulk sync (a peer whose store failed takes it once its store heals).
                let how = if self.m.peer().is_some_and(|p| p.store_failed) {
                    crate::lease::Replicated::PeerStoreFailed
                } else {
                    crate::lease::Replicated::PeerDown
                };
                for r in batch {
                    let _ = r.done.send(how);
                }
            }
        }
    }

    pub(super) fn on_applied(&mut self, id: u64, applied: Applied) {
        let Some(l) = self.link.as_mut().filter(|l| l.id == id) else {
            return;
        };
        match applied {
            Applied::Batch {
                upto,
                received,
                changed,
                done,
            } => {
                self.peer_synced = self.peer_synced.max(upto);
                l.synced += received;
                l.changed += changed;
                if done {
                    if let Some(marker) = self.p.resync_marker.take() {
                        // The rebuilt database holds the peer's lease set now.
                        if let Err(e) = std::fs::remove_file(&marker) {
                            tracing::warn!("cannot remove {}: {e}", marker.display());
                        }
                    }
                    let detail = format!(
                        "bulk sync from {} complete: {} leases received, {} changed here",
                        self.m.peer().map_or("peer", |p| p.node.as_str()),
                        l.synced,
                        l.changed
                    );
                    self.step(Input::SyncComplete { detail });
                }
            }
            Applied::Failed(e) => {
                tracing::error!("bulk sync: merging the peer's leases failed: {e}");
            }
        }
    }
}

//! Lease replication over the peer link.
//!
//! Two flows. **Live**: each lease the DHCP server commits arrives as a
//! [`ReplicationRequest`](crate::lease::ReplicationRequest); the node coalesces the requests
//! waiting at that moment into one `Msg::Leases{id}` and completes their `done` when the peer
//! answers `LeasesAck{id}` — after the peer merged the leases durably. The peer's applier in
//! turn merges every live frame that queued while it waited for its disk in one durable
//! commit. So the cost per lease falls as the rate rises (one frame and one fsync per burst,
//! not per lease) while every DHCPACK still waits for the standby's ack. With no link `done`
//! completes at once (DHCP must not wait for an absent peer); the changes reach the peer in
//! the next bulk sync. **Bulk**: on every (re)connect each side asks the other for
//! its changes after the last sequence it applied (`SyncRequest{since}`), the other streams
//! `SyncBatch`es from its [`LeaseLog`], and the receiver merges them with `apply_remote`
//! (the greater in [`Lease::merge_order`] wins: the newest `updated_ms`, then a tie-break
//! both nodes compute alike; a client keeps one active address per subnet). Both sides do
//! this, so after a split brain both merge and end with the same leases.
//!
//! Invariants: an ack is sent only after `apply_remote` returned; batches of one link are
//! applied in arrival order by one task per link; a failed merge closes nothing but is
//! logged and leaves the watermark where it was, so the next sync retries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::ha::peer::Msg;
use crate::lease::{Lease, LeaseLog, RemoteMerge, Replicated};

/// Changes per bulk-sync batch.
pub const BATCH: usize = 256;

/// Most leases in one live frame (a lease is ~250 bytes of JSON: far below `MAX_FRAME`).
pub const LIVE_BATCH: usize = 512;

/// Lease frames sent and not yet acknowledged (the active node's view of sync lag).
#[derive(Default)]
pub struct Pending {
    next_id: u64,
    waiting: BTreeMap<u64, Frame>,
}

struct Frame {
    sent: Instant,
    done: Vec<oneshot::Sender<Replicated>>,
    /// Kept until acknowledged: sent again when the link is swapped under it.
    leases: Vec<Lease>,
}

impl Pending {
    /// Registers a frame, its leases and the DHCP waiters of those; returns its id.
    pub fn add(&mut self, done: Vec<oneshot::Sender<Replicated>>, leases: Vec<Lease>) -> u64 {
        self.next_id += 1;
        self.waiting.insert(
            self.next_id,
            Frame {
                sent: Instant::now(),
                done,
                leases,
            },
        );
        self.next_id
    }

    /// The peer acknowledged `id`: those DHCPACKs may leave.
    pub fn ack(&mut self, id: u64) {
        self.complete(id, Replicated::Acked);
    }

    /// The peer could not store `id`: its DHCPACKs leave without waiting any longer.
    pub fn nack(&mut self, id: u64) {
        self.complete(id, Replicated::PeerStoreFailed);
    }

    fn complete(&mut self, id: u64, how: Replicated) {
        if let Some(f) = self.waiting.remove(&id) {
            for d in f.done {
                let _ = d.send(how);
            }
        }
    }

    /// Every frame still waiting for its ack, oldest first (to send again on a new link; a
    /// merge is idempotent, a second ack of an id is ignored).
    pub fn unacked(&self) -> impl Iterator<Item = Msg> + '_ {
        self.waiting.iter().map(|(id, f)| Msg::Leases {
            id: *id,
            leases: f.leases.clone(),
        })
    }

    /// The link is gone: release every waiter now (`replicate` returns `PeerDown` at once
    /// instead of waiting out `max_ack_delay`); the bulk sync at reconnect carries the changes.
    pub fn fail_all(&mut self) {
        self.waiting.clear();
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Seconds the oldest unacknowledged batch has waited.
    pub fn oldest_secs(&self) -> f64 {
        self.waiting
            .values()
            .map(|f| f.sent.elapsed().as_secs_f64())
            .fold(0.0, f64::max)
    }

    /// Drops entries whose waiters all gave up (DHCP's bounded wait ended).
    pub fn prune(&mut self) {
        self.waiting
            .retain(|_, f| f.done.iter().any(|d| !d.is_closed()));
    }
}

/// What a link's applier reports back to the node.
#[derive(Debug)]
pub enum Applied {
    /// A bulk batch was merged: the highest peer sequence in it, how many leases changed
    /// the local view, and whether it was the last.
    Batch {
        upto: u64,
        received: usize,
        changed: usize,
        done: bool,
    },
    /// Merging failed; the sync is incomplete.
    Failed(crate::lease::LeaseLogError),
}

/// Work for a link's applier, in arrival order.
pub enum ApplyJob {
    Live {
        id: u64,
        leases: Vec<Lease>,
    },
    Bulk {
        changes: Vec<(u64, Lease)>,
        done: bool,
    },
}

/// One pipeline per link: merges the peer's leases in arrival order and acknowledges each
/// live frame once its merge is durable.
///
/// Two tasks. The first hands every frame to the store as it arrives
/// ([`LeaseLog::apply_remote_async`] decides the merge at once and queues its commit); the
/// second awaits those commits in the same order and then acknowledges. So while one commit
/// is being fsynced the next frames are already queued behind it, and the store's group
/// commit writes them together: the standby makes about as many durable commits per second
/// as its disk and the commit linger allow, not one per frame (the primary sends a frame per
/// burst of ACKs, so at high rates that was a commit every ~13 leases, the bulk of its CPU
/// per ACK). A merge is idempotent and newest-wins, so the result equals merging one by one.
///
/// A frame the store could not merge is answered with `LeasesNack` only when `peer_nacks`
/// (the peer's hello said it reads one): an older node takes it for a malformed frame and
/// drops the link, so it gets no answer and its DHCPACKs wait `max_ack_delay` as before.
pub fn spawn_applier(
    log: Option<Arc<dyn LeaseLog>>,
    link_tx: mpsc::Sender<Msg>,
    peer_nacks: bool,
    report: impl Fn(Applied) + Send + 'static,
) -> mpsc::UnboundedSender<ApplyJob> {
    enum Staged {
        Live(u64, RemoteMerge),
        Bulk {
            upto: u64,
            received: usize,
            done: bool,
            merge: RemoteMerge,
        },
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<ApplyJob>();
    let (staged_tx, mut staged_rx) = mpsc::unbounded_channel::<Staged>();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let staged = match job {
                ApplyJob::Live { id, leases } => Staged::Live(id, merge(&log, leases)),
                ApplyJob::Bulk { changes, done } => {
                    let upto = changes.iter().map(|(s, _)| *s).max().unwrap_or(0);
                    let received = changes.len();
                    let leases: Vec<Lease> = changes.into_iter().map(|(_, l)| l).collect();
                    Staged::Bulk {
                        upto,
                        received,
                        done,
                        merge: merge(&log, leases),
                    }
                }
            };
            if staged_tx.send(staged).is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(staged) = staged_rx.recv().await {
            match staged {
                Staged::Live(id, merge) => {
                    if let Err(e) = merge.await {
                        // The store logged its failure once; the active learns it per frame
                        // so its DHCPACKs stop waiting for this node.
                        tracing::debug!(
                            frame = id,
                            "replicated lease frame {id} could not be merged: {e}"
                        );
                        if peer_nacks && link_tx.send(Msg::LeasesNack { id }).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if link_tx.send(Msg::LeasesAck { id }).await.is_err() {
                        return;
                    }
                }
                Staged::Bulk {
                    upto,
                    received,
                    done,
                    merge,
                } => match merge.await {
                    Ok(changed) => report(Applied::Batch {
                        upto,
                        received,
                        changed,
                        done,
                    }),
                    Err(e) => report(Applied::Failed(e)),
                },
            }
        }
    });
    tx
}

/// Starts a merge (a store decides it at once and queues the commit; see
/// [`LeaseLog::apply_remote_async`]); resolves once durable. No store: nothing to merge.
fn merge(log: &Option<Arc<dyn LeaseLog>>, leases: Vec<Lease>) -> RemoteMerge {
    match log {
        Some(log) if !leases.is_empty() => log.clone().apply_remote_async(leases),
        _ => Box::pin(std::future::ready(Ok(0))),
    }
}

/// Answers a peer's `SyncRequest{since}`: streams every change after `since`, then `done`.
pub fn spawn_bulk_sender(log: Option<Arc<dyn LeaseLog>>, since: u64, link_tx: mpsc::Sender<Msg>) {
    tokio::spawn(async move {
        let mut cursor = since;
        loop {
            let batch = match &log {
                None => Ok(Vec::new()),
                Some(log) => {
                    let log = log.clone();
                    match tokio::task::spawn_blocking(move || log.changes_since(cursor, BATCH))
                        .await
                    {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            let changes = match batch {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(
                        since = cursor,
                        "bulk sync: reading changes after {cursor} failed: {e}"
                    );
                    return;
                }
            };
            let done = changes.len() < BATCH;
            if let Some((s, _)) = changes.last() {
                cursor = *s;
            }
            if link_tx
                .send(Msg::SyncBatch { changes, done })
                .await
                .is_err()
                || done
            {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::testing::TempStore;
    use crate::lease::LeaseState;
    use std::net::Ipv4Addr;

    fn lease(last: u8, updated_ms: u64) -> Lease {
        numbered(u32::from(last), updated_ms)
    }

    /// The `n`th lease of a big set: 10.0.0.0 + n, a client of its own.
    fn numbered(n: u32, updated_ms: u64) -> Lease {
        let b = n.to_be_bytes();
        Lease {
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n),
            mac: [0, 1, b[0], b[1], b[2], b[3]],
            client_id: None,
            hostname: None,
            subnet: "10.0.0.0/16".into(),
            state: LeaseState::Active,
            start: 0,
            expiry: 3600,
            updated_ms,
            relay_info: None,
            classes: Vec::new(),
        }
    }

    /// More than two batches' worth, committed in several entries with some leases
    /// rewritten, so pages start inside entries and skip superseded records.
    const MANY: u32 = 2 * BATCH as u32 + 10;

    async fn store_with_many() -> TempStore {
        let store = TempStore::new();
        let all: Vec<Lease> = (1..=MANY).map(|n| numbered(n, 10)).collect();
        for chunk in all.chunks(100) {
            store.put(chunk.to_vec()).await.expect("put");
        }
        store
            .put((1..=20).map(|n| numbered(n, 20)).collect())
            .await
            .expect("put");
        assert_eq!(store.len(), MANY as usize);
        store
    }

    /// Reads a bulk sync off the link until the sender is gone.
    async fn batches(rx: &mut mpsc::Receiver<Msg>) -> Vec<(Vec<(u64, Lease)>, bool)> {
        let mut out = Vec::new();
        while let Some(m) = rx.recv().await {
            match m {
                Msg::SyncBatch { changes, done } => out.push((changes, done)),
                m => panic!("unexpected {m:?}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn bulk_sync_pages_through_every_change_and_says_done_once_at_the_end() {
        let store = store_with_many().await;
        let (tx, mut rx) = mpsc::channel(8);
        spawn_bulk_sender(Some(store.log()), 0, tx);
        let got = batches(&mut rx).await;
        assert_eq!(got.len(), 3, "two full batches and the rest");
        assert!(got.iter().all(|(c, _)| c.len() <= BATCH));
        let dones: Vec<bool> = got.iter().map(|(_, d)| *d).collect();
        assert_eq!(dones, vec![false, false, true]);
        let seqs: Vec<u64> = got
            .iter()
            .flat_map(|(c, _)| c.iter().map(|(s, _)| *s))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "sequences not increasing"
        );
        let mut leases: Vec<Lease> = got
            .into_iter()
            .flat_map(|(c, _)| c)
            .map(|(_, l)| l)
            .collect();
        leases.sort_by_key(|l| l.ip);
        assert_eq!(
            leases,
            store.all(),
            "each lease once, at its newest version"
        );
    }

    #[tokio::test]
    async fn an_interrupted_bulk_sync_resumes_from_the_receivers_watermark() {
        let sender = store_with_many().await;
        let receiver = TempStore::new();
        let (link_tx, _acks) = mpsc::channel(8);
        let (report_tx, mut reports) = mpsc::unbounded_channel();
        let jobs = spawn_applier(Some(receiver.log()), link_tx, true, move |a| {
            let _ = report_tx.send(a);
        });
        // What the node keeps: the highest peer sequence it merged.
        let mut synced = 0u64;
        let apply = |changes: Vec<(u64, Lease)>, done: bool| {
            let _ = jobs.send(ApplyJob::Bulk { changes, done });
        };

        // The link goes down after the first batch: the receiver drops its end.
        let (tx, mut rx) = mpsc::channel(1);
        spawn_bulk_sender(Some(sender.log()), 0, tx);
        match rx.recv().await {
            Some(Msg::SyncBatch { changes, done }) => {
                assert!(!done, "the first batch cannot be the last");
                apply(changes, done);
            }
            m => panic!("unexpected {m:?}"),
        }
        drop(rx);
        match reports.recv().await {
            Some(Applied::Batch { upto, received, .. }) => {
                assert_eq!(received, BATCH);
                synced = synced.max(upto);
            }
            r => panic!("unexpected {r:?}"),
        }
        assert_eq!(receiver.len(), BATCH);

        // Meanwhile the sender changes leases the receiver already has and adds new ones.
        sender
            .put(vec![numbered(1, 30), numbered(MANY + 1, 30)])
            .await
            .expect("put");

        // Reconnect: ask again from the watermark.
        let (tx, mut rx) = mpsc::channel(1);
        spawn_bulk_sender(Some(sender.log()), synced, tx);
        let rest = batches(&mut rx).await;
        assert_eq!(rest.iter().filter(|(_, d)| *d).count(), 1);
        let sent: usize = rest.iter().map(|(c, _)| c.len()).sum();
        assert!(
            sent < MANY as usize,
            "{sent} changes sent again: the resumed sync started over"
        );
        for (changes, done) in rest {
            apply(changes, done);
        }
        loop {
            match reports.recv().await {
                Some(Applied::Batch { done: true, .. }) => break,
                Some(Applied::Batch { .. }) => {}
                r => panic!("unexpected {r:?}"),
            }
        }
        assert_eq!(receiver.all(), sender.all());
        assert_eq!(receiver.len(), MANY as usize + 1);
    }

    #[tokio::test]
    async fn applier_merges_before_it_acknowledges() {
        let store = TempStore::new();
        let (tx, mut rx) = mpsc::channel(8);
        let jobs = spawn_applier(Some(store.log()), tx, true, |_| {});
        let _ = jobs.send(ApplyJob::Live {
            id: 5,
            leases: vec![lease(9, 10)],
        });
        assert_eq!(rx.recv().await, Some(Msg::LeasesAck { id: 5 }));
        assert_eq!(
            store
                .read_durable(Ipv4Addr::new(10, 0, 0, 9))
                .expect("read"),
            Some(lease(9, 10))
        );
    }

    /// A store whose disk failed: every merge fails.
    struct FailedStore;

    impl LeaseLog for FailedStore {
        fn watermark(&self) -> u64 {
            0
        }
        fn changes_since(
            &self,
            _seq: u64,
            _limit: usize,
        ) -> Result<Vec<(u64, Lease)>, crate::lease::LeaseLogError> {
            Ok(Vec::new())
        }
        fn apply_remote(
            &self,
            _leases: &[Lease],
        ) -> Result<Vec<Lease>, crate::lease::LeaseLogError> {
            Err(crate::lease::LeaseLogError::Store(
                crate::lease::store::StoreError::Damaged {
                    path: "leases.redb".into(),
                    detail: "No space left on device".into(),
                },
            ))
        }
    }

    #[tokio::test]
    async fn a_failed_merge_is_nacked_only_to_a_peer_that_reads_nacks() {
        for peer_nacks in [true, false] {
            let (tx, mut rx) = mpsc::channel(8);
            let jobs = spawn_applier(Some(Arc::new(FailedStore)), tx, peer_nacks, |_| {});
            let _ = jobs.send(ApplyJob::Live {
                id: 5,
                leases: vec![lease(9, 10)],
            });
            // An empty frame needs no store: its ack shows the failed one was answered (or
            // not) before it.
            let _ = jobs.send(ApplyJob::Live {
                id: 6,
                leases: vec![],
            });
            let mut got = vec![rx.recv().await];
            if peer_nacks {
                got.push(rx.recv().await);
            }
            let want = if peer_nacks {
                vec![
                    Some(Msg::LeasesNack { id: 5 }),
                    Some(Msg::LeasesAck { id: 6 }),
                ]
            } else {
                // An older peer would drop the link on a frame it cannot read.
                vec![Some(Msg::LeasesAck { id: 6 })]
            };
            assert_eq!(got, want, "peer reads nacks: {peer_nacks}");
        }
    }

    #[test]
    fn merge_keeps_the_newest_update() {
        let store = TempStore::new();
        store.put_blocking(vec![lease(1, 50)]);
        let changed = store
            .apply_remote(&[lease(1, 40), lease(2, 1)])
            .expect("merge");
        assert_eq!(changed, vec![lease(2, 1)]);
        assert_eq!(
            store.get(Ipv4Addr::new(10, 0, 0, 1)).map(|l| l.updated_ms),
            Some(50)
        );
    }

    #[tokio::test]
    async fn frames_queued_behind_a_commit_share_the_next_one_and_each_is_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::lease::LeaseStore::open(&dir.path().join("l.redb")).expect("open");
        let (tx, mut rx) = mpsc::channel(64);
        let jobs = spawn_applier(Some(store.clone() as Arc<dyn LeaseLog>), tx, true, |_| {});
        // Queued before the applier runs (this test's runtime is single-threaded).
        for i in 1..=20u8 {
            let _ = jobs.send(ApplyJob::Live {
                id: u64::from(i),
                leases: vec![lease(i, 10)],
            });
        }
        let mut acked = Vec::new();
        while acked.len() < 20 {
            match rx.recv().await.expect("ack") {
                Msg::LeasesAck { id } => {
                    // Acknowledged only once durable.
                    let ip = Ipv4Addr::new(10, 0, 0, id as u8);
                    assert!(store.read_durable(ip).expect("read").is_some(), "{ip}");
                    acked.push(id);
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        assert_eq!(acked, (1..=20).collect::<Vec<u64>>(), "acked in order");
        let commits = store.metrics().commits.get();
        assert!(
            commits <= 5,
            "{commits} durable commits for 20 queued frames"
        );
    }

    #[test]
    fn pending_acks_complete_every_waiter_of_the_frame() {
        let mut p = Pending::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let id = p.add(vec![tx1, tx2], vec![lease(1, 1)]);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p.unacked().collect::<Vec<_>>(),
            vec![Msg::Leases {
                id,
                leases: vec![lease(1, 1)]
            }]
        );
        p.ack(id);
        assert_eq!(rx1.try_recv().ok(), Some(Replicated::Acked));
        assert_eq!(rx2.try_recv().ok(), Some(Replicated::Acked));
        assert!(p.is_empty());
    }
}

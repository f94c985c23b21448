//! The durable lease store: an append-only redb log plus the in-memory [`LeaseIndex`] the
//! handler reads. This file is the store's face (open, submit, read, the HA change log);
//! [`super::writer`] makes changes durable (group commit, sweep), [`super::merge`] decides a
//! merge of the peer's leases, [`super::migrate`] converts older layouts at open.
//!
//! **Layout.** One table, `lease_batches`: one entry per commit, keyed by the commit's first
//! sequence number, holding that commit's records (each change is the whole lease under the
//! next sequence number); the newest record of an address is its lease. The log is also the
//! change log HA reads from a watermark (`changes_since`), skipping records a newer one
//! superseded. Why a log and not a table keyed by address: redb is a copy-on-write B-tree, so
//! each commit rewrites every page it touches. Keyed by address, 20 leases of random
//! addresses dirtied ~20 leaf pages, and the change log's removal of each superseded entry ~20
//! more: ~200 KiB of page copies, checksums, writes and writeback per commit, most of the CPU
//! of a DHCPACK (and of the HA standby's merge). Appends touch the tail page only. And one
//! entry per commit, not per record: each B-tree insert or delete costs about a microsecond,
//! two per lease were a quarter of the HA standby's CPU. Superseded records are deleted by
//! the writer's sweep, so the file stays within about twice the live set. The MAC and
//! client-id indexes live only in memory ([`LeaseIndex`], built from the log at open).
//!
//! Invariants: the index equals the log's newest records plus the jobs queued to the writer;
//! jobs are submitted under the index lock, so the disk order is the index order. Readers
//! take the writer's `Durable` lock before they open their read transaction: a record a
//! reader skips as superseded has its successor in the reader's snapshot.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use prometheus_client::registry::Registry;
use redb::{Database, ReadableTable};
use tokio::sync::{oneshot, watch};

use super::codec;
use super::fault::{self, OpenError, StoreCondition};
use super::index::LeaseIndex;
use super::migrate::META;
use super::writer::{self, boxed, durable_lock, records, Durable, Job, NewestMap, WriteError, LOG};
use super::{merge, migrate};
use super::{Lease, LeaseLog, LeaseLogError};

pub use super::writer::{StoreMetrics, BATCH_TARGET, BATCH_TARGET_REPLICATED};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    /// The file exists but cannot be read as a lease database (truncated, random bytes, a
    /// format this version cannot read): the daemon moves it aside or refuses to start.
    #[error("lease database {path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("lease database {path}: cannot create {dir}: {source}")]
    CreateDir {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lease database {path}: cannot start the writer thread: {source}")]
    StartWriter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lease database write failed: {0}")]
    Write(#[from] WriteError),
    #[error("lease database read failed: {0}")]
    Read(#[from] ReadError),
    #[error("lease database: saving the HA epoch failed: {0}")]
    SaveEpoch(#[source] Box<redb::Error>),
    #[error("lease database writer has stopped")]
    WriterGone,
    #[error("the lease database is failed: {0}")]
    Failed(String),
}

impl StoreError {
    /// Refused because the store is failed, without a try (logged once when it failed).
    pub fn store_failed(&self) -> bool {
        match self {
            StoreError::Write(w) => w.store_failed(),
            StoreError::Failed(_) => true,
            _ => false,
        }
    }
}

/// Why a read of the lease log failed: the database, or a record it holds.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Db(#[from] Box<redb::Error>),
    #[error(transparent)]
    Record(#[from] codec::CodecError),
}

fn rd<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Read(ReadError::Db(Box::new(e.into())))
}

fn bad(e: codec::CodecError) -> StoreError {
    StoreError::Read(ReadError::Record(e))
}

/// Reads the log into the index (newest record per address) and the writer's view of it;
/// returns them and the watermark (the last sequence number).
pub(super) fn load(db: &Database) -> Result<(LeaseIndex, Durable, u64), Box<redb::Error>> {
    let r = db.begin_read().map_err(boxed)?;
    let log = r.open_table(LOG).map_err(boxed)?;
    // First the newest record of each address (sequence and address are cheap to read), so
    // the index is sized once for the live set, not for a log up to twice as long.
    let mut newest = NewestMap::default();
    let mut count = 0u64;
    let mut watermark = 0u64;
    for row in log.iter().map_err(boxed)? {
        let (_, v) = row.map_err(boxed)?;
        for rec in records(v.value()) {
            count += 1;
            if let (Ok(seq), Ok(ip)) = (codec::decode_seq(rec), codec::decode_ip(rec)) {
                newest.insert(u32::from(ip), seq);
                watermark = watermark.max(seq);
            }
        }
    }
    newest.shrink_to_fit();
    let mut index = LeaseIndex::with_capacity(newest.len());
    for row in log.iter().map_err(boxed)? {
        let (_, v) = row.map_err(boxed)?;
        for rec in records(v.value()) {
            let (Ok(seq), Ok(ip)) = (codec::decode_seq(rec), codec::decode_ip(rec)) else {
                tracing::warn!("skipping an unreadable lease record of {} bytes", rec.len());
                continue;
            };
            if newest.get(&u32::from(ip)) != Some(&seq) {
                continue;
            }
            match codec::decode(rec) {
                Ok((lease, _)) => {
                    index.upsert(lease);
                }
                Err(e) => tracing::warn!(ip = %ip, "skipping lease {ip}: {e}"),
            }
        }
    }
    Ok((
        index,
        Durable {
            newest,
            records: count,
        },
        watermark,
    ))
}

/// A commit in flight; resolves to the sequence number of its last lease once durable.
pub struct PendingCommit(oneshot::Receiver<Result<u64, WriteError>>);

impl PendingCommit {
    pub async fn wait(self) -> Result<u64, StoreError> {
        match self.0.await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
    /// For synchronous callers (not on a runtime thread: use `spawn_blocking`).
    pub fn wait_blocking(self) -> Result<u64, StoreError> {
        match self.0.blocking_recv() {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

/// What the store and its writer thread share.
pub(super) struct Shared {
    pub path: PathBuf,
    /// `None` while the store is failed: closed, waiting to be reopened (see [`fault`]).
    pub db: RwLock<Option<Arc<Database>>>,
    pub index: Mutex<LeaseIndex>,
    pub durable: Mutex<Durable>,
    pub watermark: AtomicU64,
    /// Leases a commit waits for under load (see [`BATCH_TARGET`]); read by the writer.
    pub batch_target: AtomicUsize,
    /// Bumped (under the index lock) each time a heal reloads the index.
    pub generation: AtomicU64,
    pub condition: watch::Sender<StoreCondition>,
    pub metrics: StoreMetrics,
}

impl Shared {
    pub fn db(&self) -> Option<Arc<Database>> {
        self.db.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn index(&self) -> MutexGuard<'_, LeaseIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct LeaseStore {
    s: Arc<Shared>,
    /// `None` only while dropping.
    writer: Option<std_mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl LeaseStore {
    /// Opens (or creates) the database, loads every lease into memory and starts the writer.
    /// After a crash redb repairs the file here; committed transactions are all present.
    /// A file redb cannot read is [`StoreError::Damaged`], never a panic.
    pub fn open(path: &Path) -> Result<Arc<LeaseStore>, StoreError> {
        let open_err = |source: Box<redb::Error>| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let damaged = |detail: String| StoreError::Damaged {
            path: path.to_path_buf(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let db = match fault::open_db(path) {
            Ok(db) => db,
            Err(e) if e.is_damaged() => return Err(damaged(e.to_string())),
            Err(OpenError::Redb(e)) => return Err(open_err(e)),
            Err(e) => return Err(damaged(e.to_string())),
        };
        // A damaged file can also get past the header and fail (or assert) in its tables.
        let prepared = fault::quiet_catch_unwind(|| -> Result<_, Box<redb::Error>> {
            // Create the tables once so readers never see "table does not exist".
            let txn = db.begin_write().map_err(boxed)?;
            txn.open_table(LOG).map_err(boxed)?;
            migrate::drop_legacy_indexes(&txn)?;
            migrate::migrate_legacy(&txn, path)?;
            txn.commit().map_err(boxed)?;
            load(&db)
        });
        let (index, durable, watermark) = match prepared {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) if fault::is_damage(&e) => return Err(damaged(e.to_string())),
            Ok(Err(e)) => return Err(open_err(e)),
            Err(panic) => return Err(damaged(format!("redb: {panic}"))),
        };
        let metrics = StoreMetrics::default();
        metrics.log_records.set(durable.records as i64);
        let leases = index.len();
        let s = Arc::new(Shared {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            index: Mutex::new(index),
            durable: Mutex::new(durable),
            watermark: AtomicU64::new(watermark),
            batch_target: AtomicUsize::new(BATCH_TARGET),
            generation: AtomicU64::new(0),
            condition: watch::channel(StoreCondition::Writable).0,
            metrics,
        });
        let (tx, writer_thread) =
            writer::spawn(s.clone(), watermark).map_err(|source| StoreError::StartWriter {
                path: path.to_path_buf(),
                source,
            })?;
        tracing::info!(
            path = %path.display(),
            leases,
            watermark,
            "lease database {} opened with {} leases",
            path.display(),
            leases
        );
        Ok(Arc::new(LeaseStore {
            s,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
        }))
    }

    /// Whether the store can make changes durable; follows every change of state.
    pub fn condition(&self) -> watch::Receiver<StoreCondition> {
        self.s.condition.subscribe()
    }

    /// Why the store cannot write now (`None`: it can).
    pub fn failure(&self) -> Option<String> {
        self.s.condition.borrow().failure().map(str::to_string)
    }

    /// The open database, or why there is none (the store is failed and closed).
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.s
            .db()
            .ok_or_else(|| StoreError::Failed(self.failure().unwrap_or_default()))
    }

    pub fn path(&self) -> &Path {
        &self.s.path
    }

    /// The in-memory view. Hold it briefly; submit the changes made under it before
    /// releasing it, so the disk sees them in the same order.
    pub fn index(&self) -> MutexGuard<'_, LeaseIndex> {
        self.s.index()
    }

    /// Queues leases (already applied to the index) for the next group commit.
    pub fn submit(&self, leases: Vec<Lease>) -> PendingCommit {
        self.submit_job(leases, false)
    }

    /// How many leases a group commit waits for under load (at most 2 ms); default
    /// [`BATCH_TARGET`]. An HA node sets more: each of its commits becomes one replication
    /// frame, one merge and one fsync on the standby, so fewer, bigger commits save CPU on
    /// both nodes for about the same ACK latency (the standby no longer waits to batch).
    pub fn set_batch_target(&self, leases: usize) {
        self.s.batch_target.store(leases.max(1), Ordering::Relaxed);
    }

    fn submit_job(&self, leases: Vec<Lease>, remote: bool) -> PendingCommit {
        let (done, rx) = oneshot::channel();
        let job = Job {
            leases,
            queued: Instant::now(),
            done,
            remote,
            // Callers submit under the index lock, which a heal holds while it bumps this.
            generation: self.s.generation.load(Ordering::Acquire),
        };
        // A job the writer cannot take is dropped with its sender: the caller's wait then
        // says WriterGone.
        if let Some(w) = &self.writer {
            let _ = w.send(job);
        }
        PendingCommit(rx)
    }

    /// Applies leases to the index and commits them; resolves once durable.
    pub async fn put(&self, leases: Vec<Lease>) -> Result<u64, StoreError> {
        let pending = {
            let mut ix = self.index();
            for l in &leases {
                ix.upsert(l.clone());
            }
            self.submit(leases)
        };
        pending.wait().await
    }

    /// Expires due leases and declined holds durably; returns the leases that were active
    /// (the ones to announce as `lease.expire`).
    pub async fn expire_due(&self, now_s: u64) -> Result<Vec<Lease>, StoreError> {
        let (pending, announce) = {
            let mut ix = self.index();
            let due = ix.expire_due(now_s, crate::events::now_ms());
            if due.is_empty() {
                return Ok(Vec::new());
            }
            let announce: Vec<Lease> = due
                .iter()
                .filter(|(_, was)| *was)
                .map(|(l, _)| l.clone())
                .collect();
            (
                self.submit(due.into_iter().map(|(l, _)| l).collect()),
                announce,
            )
        };
        pending.wait().await?;
        Ok(announce)
    }

    /// Reads one lease from disk (not the index): what a restart would see.
    pub fn read_durable(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let d = durable_lock(&self.s.durable);
        let Some(&seq) = d.newest.get(&u32::from(ip)) else {
            return Ok(None);
        };
        let r = self.db()?.begin_read().map_err(rd)?;
        let t = r.open_table(LOG).map_err(rd)?;
        let Some(row) = t.range(..=seq).map_err(rd)?.next_back() else {
            return Ok(None);
        };
        let (_, v) = row.map_err(rd)?;
        for rec in records(v.value()) {
            if codec::decode_seq(rec).map_err(bad)? == seq {
                return codec::decode(rec).map(|(l, _)| Some(l)).map_err(bad);
            }
        }
        Ok(None)
    }

    /// Number of addresses with a lease record on disk (read from the log itself).
    pub fn durable_len(&self) -> Result<u64, StoreError> {
        let r = self.db()?.begin_read().map_err(rd)?;
        let t = r.open_table(LOG).map_err(rd)?;
        let mut ips = std::collections::HashSet::new();
        for row in t.iter().map_err(rd)? {
            let (_, v) = row.map_err(rd)?;
            for rec in records(v.value()) {
                ips.insert(codec::decode_ip(rec).map_err(bad)?);
            }
        }
        Ok(ips.len() as u64)
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.s.metrics
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        self.s.metrics.register(registry);
    }
}

impl Drop for LeaseStore {
    /// Lets the writer finish the queued commits and close the database, so the file can be
    /// reopened at once (redb allows one open handle per file).
    fn drop(&mut self) {
        self.writer = None;
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// The META key of the saved HA epoch.
const EPOCH_KEY: &str = "ha_epoch";

impl LeaseLog for LeaseStore {
    fn watermark(&self) -> u64 {
        self.s.watermark.load(Ordering::Acquire)
    }

    fn saved_epoch(&self) -> u64 {
        let read = || -> Result<u64, StoreError> {
            let r = self.db()?.begin_read().map_err(rd)?;
            let meta = match r.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(rd(e)),
            };
            Ok(meta.get(EPOCH_KEY).map_err(rd)?.map_or(0, |v| v.value()))
        };
        read().unwrap_or_else(|e| {
            tracing::warn!("cannot read the saved HA epoch, starting from 0: {e}");
            0
        })
    }

    fn save_epoch(&self, epoch: u64) -> Result<(), LeaseLogError> {
        // Its own transaction beside the writer's commits (redb runs one writer at a time):
        // epochs change at takeovers only, never on the DHCP path.
        let db = self.db()?;
        let write = || -> Result<(), Box<redb::Error>> {
            let txn = db.begin_write().map_err(boxed)?;
            {
                let mut meta = txn.open_table(META).map_err(boxed)?;
                let saved = meta.get(EPOCH_KEY).map_err(boxed)?.map_or(0, |v| v.value());
                meta.insert(EPOCH_KEY, saved.max(epoch)).map_err(boxed)?;
            }
            txn.commit().map_err(boxed)
        };
        write()
            .map_err(StoreError::SaveEpoch)
            .map_err(LeaseLogError::from)
    }

    fn changes_since(&self, seq: u64, limit: usize) -> Result<Vec<(u64, Lease)>, LeaseLogError> {
        // Taken before the snapshot: a record skipped as superseded below has its successor
        // in the snapshot (the writer records a commit here only after it is durable).
        let d = durable_lock(&self.s.durable);
        let r = self.db()?.begin_read().map_err(rd)?;
        let log = r.open_table(LOG).map_err(rd)?;
        let after = seq.saturating_add(1);
        // The entry holding `after` may start before it.
        let start = match log.range(..=after).map_err(rd)?.next_back() {
            Some(row) => row.map_err(rd)?.0.value(),
            None => 0,
        };
        let mut out = Vec::new();
        for row in log.range(start..).map_err(rd)? {
            let (_, v) = row.map_err(rd)?;
            for rec in records(v.value()) {
                let s = codec::decode_seq(rec).map_err(bad)?;
                if s <= seq {
                    continue;
                }
                let ip = codec::decode_ip(rec).map_err(bad)?;
                if d.newest.get(&u32::from(ip)).is_some_and(|n| *n > s) {
                    continue;
                }
                let (lease, _) = codec::decode(rec).map_err(bad)?;
                out.push((s, lease));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn failure(&self) -> Option<String> {
        LeaseStore::failure(self)
    }

    fn apply_remote(&self, remote: &[Lease]) -> Result<Vec<Lease>, LeaseLogError> {
        let (changed, pending) = self.stage_remote(remote);
        if let Some(p) = pending {
            p.wait_blocking()?;
        }
        Ok(changed)
    }

    /// The standby's live merge: decided at once under the index lock, then the durable
    /// commit awaited like a DHCP ACK's, with no blocking-pool thread in between.
    fn apply_remote_async(self: Arc<Self>, leases: Vec<Lease>) -> super::RemoteMerge {
        let (changed, pending) = self.stage_remote(&leases);
        Box::pin(async move {
            if let Some(p) = pending {
                p.wait().await?;
            }
            Ok(changed.len())
        })
    }
}

impl LeaseStore {
    /// Merges `remote` into the index (see [`merge::merge_into`]) and submits what changed
    /// to the writer; the commit is the caller's to wait for.
    fn stage_remote(&self, remote: &[Lease]) -> (Vec<Lease>, Option<PendingCommit>) {
        let changed = merge::merge_into(&mut self.index(), remote);
        if changed.is_empty() {
            return (changed, None);
        }
        let pending = self.submit_job(changed.clone(), true);
        (changed, Some(pending))
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

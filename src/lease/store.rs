//! The durable lease store: an append-only redb log plus the in-memory [`LeaseIndex`] the
//! handler reads.
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
//! two per lease were a quarter of the HA standby's CPU. Superseded records are deleted by a
//! sweep that runs inside the regular commits whenever the log holds more than twice the live
//! records (plus [`COMPACT_SLACK`]): it walks the entries from the oldest end, a bounded
//! number of records per commit ([`SWEEP_PER_LEASE`] per lease written), and rewrites each
//! entry without its stale records (or deletes it), so the file stays within about twice the
//! live set and no commit is held up by a big clean-up. The MAC and client-id indexes live
//! only in memory ([`LeaseIndex`], built from the log at open). Databases of the older
//! layouts (`leases` keyed by address with `changes`; `lease_log`, an entry per record) are
//! converted at open, keeping every sequence number.
//!
//! **Group commit.** Every write goes to one writer thread. It takes whatever is queued, writes
//! it in one redb transaction with `Durability::Immediate`, and only then completes each
//! caller's future. While one transaction is being fsynced the next batch queues up, so the
//! cost of an fsync is shared by every ACK that arrived meanwhile, and a caller that sends its
//! DHCPACK after `commit` returns never acknowledges a lease that is not on disk.
//!
//! Invariants: the index equals the log's newest records plus the jobs queued to the writer;
//! jobs are written in the order they were submitted (submission happens under the index
//! lock, so the disk order is the index order); the watermark only moves after a commit is
//! durable; the sweep never deletes the newest record of an address (so the last record of
//! the log is always live and the watermark survives a restart). `Durable::newest` is
//! updated after each commit under its lock, and readers take that lock before they open
//! their read transaction: a record a reader skips as superseded has its successor in the
//! reader's snapshot.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::codec::{self, push_record};
use super::index::LeaseIndex;
use super::{Lease, LeaseLog, LeaseLogError, LeaseState};

/// First sequence number of a commit → that commit's records (see [`codec::push_record`]).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("lease_batches");
/// The first log layout (one entry per record), converted into `LOG` at open.
const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("lease_log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The older layout, converted into `LOG` at open: address → record, and sequence → address.
const LEGACY_LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
const LEGACY_CHANGES: TableDefinition<u64, u32> = TableDefinition::new("changes");
/// Tables and META key of the on-disk client indexes of older versions, dropped at open.
const LEGACY_BY_MAC: TableDefinition<&[u8], ()> = TableDefinition::new("by_mac");
const LEGACY_BY_CLIENT_ID: TableDefinition<&[u8], ()> = TableDefinition::new("by_client_id");
const LEGACY_INDEXED_SEQ: &str = "indexed_seq";

/// redb page cache (bytes).
const REDB_CACHE: usize = 1 << 20;

/// The sweep starts when the log holds more than twice the live records plus this many.
const COMPACT_SLACK: u64 = 1024;

/// Records the sweep examines per commit: this many per lease the commit writes, plus
/// [`SWEEP_MIN`]. Four times the append rate: one pass over a log of twice the live set
/// takes half as many writes as filled it.
const SWEEP_PER_LEASE: usize = 4;
const SWEEP_MIN: usize = 64;

/// Most leases written in one transaction; a bigger backlog is split so one commit cannot
/// hold every waiting ACK for long.
const MAX_BATCH: usize = 4096;

/// Under load (the previous transaction carried more than one job, or this one's first job
/// came less than this long after the previous commit ended) the oldest queued job waits
/// until it is this old before its transaction starts, so more jobs join it. Each
/// fsync costs the same whatever it carries, so at thousands of ACKs per second this halves
/// the transactions (and the CPU per lease). Counted from the job's submission, not from when
/// the writer looks: a job that already waited out a slow commit starts at once, so the
/// linger never adds to a wait the disk already imposed. A lone client never waits.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// What the linger waits for: about this many leases per transaction. At the arrival rate
/// of the last transactions that takes `target / rate`; the linger is that, at most
/// [`LINGER`]. Below ~6,000 ACKs/s nothing changes (the full 2 ms); above, batches fill
/// sooner and the wait shrinks with them (1 ms at 12,000/s), where a fixed 2 ms only added
/// latency (p99 5-7.5 ms at 11,500/s; 4 ms with 1 ms). A fixed 1 ms instead cost 30 us more
/// CPU per exchange at 4,000/s. An HA node raises it ([`LeaseStore::set_batch_target`]).
pub const BATCH_TARGET: usize = 12;

/// The batch target of an HA node: at 16,000 ACKs/s a commit every ~2.5 ms (the 2 ms cap)
/// instead of every ~1 ms, so the standby gets a third of the frames, merges and fsyncs.
/// Below ~6,000 ACKs/s both targets give the same 2 ms linger.
pub const BATCH_TARGET_REPLICATED: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease database {path}: {msg}")]
    Open { path: PathBuf, msg: String },
    #[error("lease database write failed: {0}")]
    Write(String),
    #[error("lease database read failed: {0}")]
    Read(String),
    #[error("lease database writer has stopped")]
    WriterGone,
}

impl From<StoreError> for LeaseLogError {
    fn from(e: StoreError) -> Self {
        LeaseLogError::Store(e.to_string())
    }
}

fn wr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Write(e.to_string())
}
fn rd<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Read(e.to_string())
}

/// Store metrics, registered on the daemon's registry by [`LeaseStore::register_metrics`].
#[derive(Clone)]
pub struct StoreMetrics {
    pub commits: Counter,
    pub leases_written: Counter,
    pub commit_seconds: Histogram,
    /// Time inside redb's commit: the page writes and its one `fdatasync`.
    pub flush_seconds: Histogram,
    /// From a job's submission to the start of the transaction that carries it.
    pub queue_seconds: Histogram,
    pub batch_leases: Histogram,
    /// Records in the append-only log (live and superseded).
    pub log_records: Gauge,
    /// Superseded records the sweep deleted.
    pub compacted: Counter,
}

/// Buckets for the writer's timings: fine below 5 ms (the ACK latency target).
fn writer_buckets() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.25,
    ])
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commits: Counter::default(),
            leases_written: Counter::default(),
            commit_seconds: writer_buckets(),
            flush_seconds: writer_buckets(),
            queue_seconds: writer_buckets(),
            batch_leases: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0]),
            log_records: Gauge::default(),
            compacted: Counter::default(),
        }
    }
}

type Done = oneshot::Sender<Result<u64, StoreError>>;

struct Job {
    leases: Vec<Lease>,
    queued: Instant,
    done: Done,
    /// A merge of the peer's leases: it never waits for company (see `writer_loop`).
    remote: bool,
}

/// Hashes an IPv4 address (as `u32`) with one multiply. The writer updates its map for every
/// lease it writes, where SipHash cost more than the B-tree insert. Seeded per process, and
/// addresses come from the configured pools, so nobody can line up collisions.
#[derive(Clone, Copy)]
struct IpHash(u64);

impl std::hash::BuildHasher for IpHash {
    type Hasher = IpHasher;
    fn build_hasher(&self) -> IpHasher {
        IpHasher(self.0)
    }
}

impl Default for IpHash {
    fn default() -> Self {
        IpHash(rand::random::<u64>() | 1)
    }
}

struct IpHasher(u64);

impl std::hash::Hasher for IpHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u32(u32::from(*b));
        }
    }
    fn write_u32(&mut self, x: u32) {
        let h = (u64::from(x) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type NewestMap = HashMap<u32, u64, IpHash>;

/// What is on disk, as the writer left it after its last commit.
struct Durable {
    /// Address → sequence number of its newest record in the log.
    newest: NewestMap,
    /// Records in the log, superseded ones included.
    records: u64,
}

fn durable_lock(d: &Mutex<Durable>) -> MutexGuard<'_, Durable> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors of open-time work, as text for [`StoreError::Open`].
fn es<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The records of a log entry, in sequence order. A truncated tail ends the list (the
/// records before it are still good; each is checked when decoded).
fn records(entry: &[u8]) -> impl Iterator<Item = &[u8]> {
    codec::records(entry).map_while(Result::ok)
}

/// Records per entry when converting an older layout.
const CONVERT_BATCH: usize = 256;

/// Converts the older layouts into `LOG`, keeping each record's sequence number so a peer's
/// watermark stays valid: `leases` keyed by address plus the `changes` log (the first
/// version), and `lease_log`, one entry per record. A record whose sequence cannot be read
/// was skipped at every open before; it is dropped with a warning.
fn migrate_legacy(txn: &redb::WriteTransaction, path: &Path) -> Result<(), String> {
    let names: Vec<String> = txn
        .list_tables()
        .map_err(es)?
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    if !has("leases") && !has("lease_log") {
        return Ok(());
    }
    let mut old: Vec<(u64, Vec<u8>)> = Vec::new();
    if has("leases") {
        let t = txn.open_table(LEGACY_LEASES).map_err(es)?;
        for row in t.iter().map_err(es)? {
            let (k, v) = row.map_err(es)?;
            match codec::decode_seq(v.value()) {
                Ok(seq) => old.push((seq, v.value().to_vec())),
                Err(e) => tracing::warn!(
                    ip = %Ipv4Addr::from(k.value()),
                    "dropping unreadable lease record of {} while converting: {e}",
                    Ipv4Addr::from(k.value())
                ),
            }
        }
    }
    if has("lease_log") {
        let t = txn.open_table(LEGACY_LOG).map_err(es)?;
        for row in t.iter().map_err(es)? {
            let (k, v) = row.map_err(es)?;
            old.push((k.value(), v.value().to_vec()));
        }
    }
    old.sort_by_key(|(seq, _)| *seq);
    let moved = old.len();
    {
        let mut log = txn.open_table(LOG).map_err(es)?;
        for chunk in old.chunks(CONVERT_BATCH) {
            let mut entry = Vec::new();
            for (_, rec) in chunk {
                push_record(&mut entry, rec);
            }
            log.insert(chunk[0].0, entry.as_slice()).map_err(es)?;
        }
    }
    txn.delete_table(LEGACY_LEASES).map_err(es)?;
    txn.delete_table(LEGACY_CHANGES).map_err(es)?;
    txn.delete_table(LEGACY_LOG).map_err(es)?;
    tracing::info!(
        path = %path.display(),
        leases = moved,
        "lease database {} converted to the current append-only log ({moved} records)",
        path.display()
    );
    Ok(())
}

/// Reads the log into the index (newest record per address) and the writer's view of it;
/// returns them and the watermark (the last sequence number).
fn load(db: &Database) -> Result<(LeaseIndex, Durable, u64), String> {
    let r = db.begin_read().map_err(es)?;
    let log = r.open_table(LOG).map_err(es)?;
    // First the newest record of each address (sequence and address are cheap to read), so
    // the index is sized once for the live set, not for a log up to twice as long.
    let mut newest = NewestMap::default();
    let mut count = 0u64;
    let mut watermark = 0u64;
    for row in log.iter().map_err(es)? {
        let (_, v) = row.map_err(es)?;
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
    for row in log.iter().map_err(es)? {
        let (_, v) = row.map_err(es)?;
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
pub struct PendingCommit(oneshot::Receiver<Result<u64, StoreError>>);

impl PendingCommit {
    pub async fn wait(self) -> Result<u64, StoreError> {
        self.0.await.unwrap_or(Err(StoreError::WriterGone))
    }
    /// For synchronous callers (not on a runtime thread: use `spawn_blocking`).
    pub fn wait_blocking(self) -> Result<u64, StoreError> {
        self.0
            .blocking_recv()
            .unwrap_or(Err(StoreError::WriterGone))
    }
}

pub struct LeaseStore {
    db: Arc<Database>,
    index: Mutex<LeaseIndex>,
    durable: Arc<Mutex<Durable>>,
    /// `None` only while dropping.
    writer: Option<std_mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    watermark: Arc<AtomicU64>,
    /// Leases a commit waits for under load (see [`BATCH_TARGET`]); read by the writer.
    batch_target: Arc<std::sync::atomic::AtomicUsize>,
    metrics: StoreMetrics,
    path: PathBuf,
}

impl LeaseStore {
    /// Opens (or creates) the database, loads every lease into memory and starts the writer.
    /// After a crash redb repairs the file here; committed transactions are all present.
    pub fn open(path: &Path) -> Result<Arc<LeaseStore>, StoreError> {
        let open_err = |msg: String| StoreError::Open {
            path: path.to_path_buf(),
            msg,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Lookups come from the in-memory index, so redb's page cache only needs the pages
        // a commit touches; its 1 GiB default would let RSS grow with the file.
        let db = Database::builder()
            .set_cache_size(REDB_CACHE)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;
        // Create the tables once so readers never see "table does not exist".
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            txn.open_table(LOG).map_err(|e| open_err(e.to_string()))?;
            let mut meta = txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
            meta.remove(LEGACY_INDEXED_SEQ)
                .map_err(|e| open_err(e.to_string()))?;
        }
        for legacy in [LEGACY_BY_MAC, LEGACY_BY_CLIENT_ID] {
            if txn
                .delete_table(legacy)
                .map_err(|e| open_err(e.to_string()))?
            {
                tracing::info!("dropped the on-disk {legacy} index (kept in memory now)");
            }
        }
        migrate_legacy(&txn, path).map_err(open_err)?;
        txn.commit().map_err(|e| open_err(e.to_string()))?;

        let (index, durable, watermark) = load(&db).map_err(open_err)?;
        let db = Arc::new(db);
        let durable = Arc::new(Mutex::new(durable));
        let (tx, rx) = std_mpsc::channel();
        let wm = Arc::new(AtomicU64::new(watermark));
        let metrics = StoreMetrics::default();
        metrics
            .log_records
            .set(durable_lock(&durable).records as i64);
        let batch_target = Arc::new(std::sync::atomic::AtomicUsize::new(BATCH_TARGET));
        let rt = tokio::runtime::Handle::try_current().ok();
        let writer_thread = {
            let db = db.clone();
            let wm = wm.clone();
            let m = metrics.clone();
            let durable = durable.clone();
            let target = batch_target.clone();
            std::thread::Builder::new()
                .name("lease-writer".into())
                .spawn(move || {
                    let w = Writer {
                        db: &db,
                        watermark: &wm,
                        durable: &durable,
                        batch_target: &target,
                        m: &m,
                        rt,
                    };
                    writer_loop(&w, rx, watermark)
                })
                .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?
        };
        tracing::info!(
            path = %path.display(),
            leases = index.len(),
            watermark,
            "lease database {} opened with {} leases",
            path.display(),
            index.len()
        );
        Ok(Arc::new(LeaseStore {
            db,
            index: Mutex::new(index),
            durable,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            watermark: wm,
            batch_target,
            metrics,
            path: path.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The in-memory view. Hold it briefly; submit the changes made under it before
    /// releasing it, so the disk sees them in the same order.
    pub fn index(&self) -> MutexGuard<'_, LeaseIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
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
        self.batch_target.store(leases.max(1), Ordering::Relaxed);
    }

    fn submit_job(&self, leases: Vec<Lease>, remote: bool) -> PendingCommit {
        let (done, rx) = oneshot::channel();
        let job = Job {
            leases,
            queued: Instant::now(),
            done,
            remote,
        };
        let refused = match &self.writer {
            Some(w) => w.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = refused {
            let _ = job.done.send(Err(StoreError::WriterGone));
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
        let d = durable_lock(&self.durable);
        let Some(&seq) = d.newest.get(&u32::from(ip)) else {
            return Ok(None);
        };
        let r = self.db.begin_read().map_err(rd)?;
        let t = r.open_table(LOG).map_err(rd)?;
        let Some(row) = t.range(..=seq).map_err(rd)?.next_back() else {
            return Ok(None);
        };
        let (_, v) = row.map_err(rd)?;
        for rec in records(v.value()) {
            if codec::decode_seq(rec).map_err(rd)? == seq {
                return codec::decode(rec).map(|(l, _)| Some(l)).map_err(rd);
            }
        }
        Ok(None)
    }

    /// Number of addresses with a lease record on disk (read from the log itself).
    pub fn durable_len(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read().map_err(rd)?;
        let t = r.open_table(LOG).map_err(rd)?;
        let mut ips = std::collections::HashSet::new();
        for row in t.iter().map_err(rd)? {
            let (_, v) = row.map_err(rd)?;
            for rec in records(v.value()) {
                ips.insert(codec::decode_ip(rec).map_err(rd)?);
            }
        }
        Ok(ips.len() as u64)
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "lease_commits",
            "Group-commit transactions made durable",
            m.commits.clone(),
        );
        registry.register(
            "lease_writes",
            "Lease records written",
            m.leases_written.clone(),
        );
        registry.register(
            "lease_commit_seconds",
            "Time from transaction start to durable commit",
            m.commit_seconds.clone(),
        );
        registry.register(
            "lease_commit_flush_seconds",
            "Time in the database commit proper: page writes and one fdatasync",
            m.flush_seconds.clone(),
        );
        registry.register(
            "lease_commit_queue_seconds",
            "From a write's submission to the start of the transaction that carries it",
            m.queue_seconds.clone(),
        );
        registry.register(
            "lease_commit_batch_leases",
            "Leases per group-commit transaction",
            m.batch_leases.clone(),
        );
        registry.register(
            "lease_log_records",
            "Records in the lease log, superseded ones included (compaction keeps it under about twice the leases)",
            m.log_records.clone(),
        );
        registry.register(
            "lease_log_compacted",
            "Superseded lease records deleted by the log's compaction",
            m.compacted.clone(),
        );
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

/// What the writer thread works with.
struct Writer<'a> {
    db: &'a Database,
    watermark: &'a AtomicU64,
    durable: &'a Mutex<Durable>,
    batch_target: &'a std::sync::atomic::AtomicUsize,
    m: &'a StoreMetrics,
    /// The runtime of the store's users, when it was opened on one: a commit's waiters are
    /// woken from there, all at once (see `complete`).
    rt: Option<tokio::runtime::Handle>,
}

/// Completes the jobs of one durable commit. From the runtime when there is one: woken
/// one by one from this thread, the runtime started on the first waiters (and the HA node
/// sent their leases to the standby) before this thread, preempted on the same core, had
/// woken the rest, so one commit went out as two or three replication frames, each one a
/// merge and an fsync on the standby. One task that wakes them all keeps the commit whole.
fn complete(rt: Option<&tokio::runtime::Handle>, done: Vec<(Done, u64)>) {
    let send = |done: Vec<(Done, u64)>| {
        for (d, end) in done {
            let _ = d.send(Ok(end));
        }
    };
    match rt {
        Some(h) => {
            h.spawn(async move { send(done) });
        }
        None => send(done),
    }
}

fn writer_loop(ctx: &Writer<'_>, rx: std_mpsc::Receiver<Job>, mut seq: u64) {
    let Writer {
        db,
        watermark,
        durable,
        batch_target,
        m,
        ..
    } = *ctx;
    // Where the compaction sweep goes on (sequence numbers; 0: from the oldest record).
    let mut sweep = 0u64;
    let mut busy = false;
    // Leases per second arriving, smoothed over the last transactions (0: unknown).
    let mut rate = 0.0f64;
    let mut last_start: Option<Instant> = None;
    let mut last_end: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut n = first.leases.len();
        let streaming =
            last_end.is_some_and(|e| first.queued.saturating_duration_since(e) < LINGER);
        let target = batch_target.load(Ordering::Relaxed);
        // A merge never lingers: it is the active node's batch already, and its DHCPACKs
        // wait for it on the other node.
        let linger = !first.remote && (busy || streaming) && n < target;
        let mut jobs = vec![first];
        if linger {
            // Sleep rather than wait on the channel: a blocked receiver is woken by every
            // send, which would cost a context switch per ACK instead of one per batch.
            let linger = if rate > 0.0 {
                LINGER.min(std::time::Duration::from_secs_f64(target as f64 / rate))
            } else {
                LINGER
            };
            let left = linger.saturating_sub(jobs[0].queued.elapsed());
            if !left.is_zero() {
                std::thread::sleep(left);
            }
        }
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.leases.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        busy = jobs.len() > 1;
        let t = Instant::now();
        if let Some(prev) = last_start {
            let dt = t.saturating_duration_since(prev).as_secs_f64();
            if dt > 0.0 {
                let now_rate = n as f64 / dt;
                rate = if rate == 0.0 {
                    now_rate
                } else {
                    0.7 * rate + 0.3 * now_rate
                };
            }
        }
        last_start = Some(t);
        for j in &jobs {
            m.queue_seconds
                .observe(t.saturating_duration_since(j.queued).as_secs_f64());
        }
        let start_seq = seq;
        match write_batch(db, &jobs, &mut seq, durable, sweep) {
            Ok(w) => {
                {
                    let mut d = durable_lock(durable);
                    for (ip, s) in w.written {
                        d.newest.insert(ip, s);
                    }
                    d.records = d.records + n as u64 - w.deleted;
                    m.log_records.set(d.records as i64);
                }
                sweep = w.sweep;
                m.compacted.inc_by(w.deleted);
                let (ends, flush) = (w.ends, w.flush);
                m.flush_seconds.observe(flush.as_secs_f64());
                watermark.store(seq, Ordering::Release);
                m.commits.inc();
                m.leases_written.inc_by(n as u64);
                m.commit_seconds.observe(t.elapsed().as_secs_f64());
                m.batch_leases.observe(n as f64);
                complete(
                    ctx.rt.as_ref(),
                    jobs.into_iter().map(|j| j.done).zip(ends).collect(),
                );
                last_end = Some(Instant::now());
            }
            Err(e) => {
                seq = start_seq;
                tracing::error!(
                    leases = n,
                    "lease commit of {n} leases failed, no DHCPACK sent for them: {e}"
                );
                for job in jobs {
                    let _ = job.done.send(Err(StoreError::Write(e.to_string())));
                }
            }
        }
    }
}

/// What one transaction did.
struct Written {
    /// Each job's last sequence number.
    ends: Vec<u64>,
    /// The commit proper: page writes and fsync.
    flush: std::time::Duration,
    /// (address, sequence) of every record appended, in order.
    written: Vec<(u32, u64)>,
    /// Superseded records the sweep deleted, and where it goes on next time.
    deleted: u64,
    sweep: u64,
}

/// Appends every job's leases to the log as one entry, in one durable transaction, sweeping
/// superseded records on the way when the log has grown past twice the live set. One entry
/// per commit, not per lease: each B-tree insert and delete cost about a microsecond, two per
/// lease were a quarter of the HA standby's CPU.
fn write_batch(
    db: &Database,
    jobs: &[Job],
    seq: &mut u64,
    durable: &Mutex<Durable>,
    mut sweep: u64,
) -> Result<Written, StoreError> {
    let txn = db.begin_write().map_err(wr)?;
    let mut ends = Vec::with_capacity(jobs.len());
    let mut written = Vec::new();
    let mut deleted = 0u64;
    {
        let mut log = txn.open_table(LOG).map_err(wr)?;
        let first_new = *seq + 1;
        let mut entry = Vec::new();
        for job in jobs {
            for lease in &job.leases {
                *seq += 1;
                push_record(&mut entry, &codec::encode(lease, *seq));
                written.push((u32::from(lease.ip), *seq));
            }
            ends.push(*seq);
        }
        if !written.is_empty() {
            log.insert(first_new, entry.as_slice()).map_err(wr)?;
        }
        let (live, total) = {
            let d = durable_lock(durable);
            (d.newest.len() as u64, d.records + written.len() as u64)
        };
        if total > 2 * live + COMPACT_SLACK {
            let budget = SWEEP_MIN + SWEEP_PER_LEASE * written.len();
            // Older entries only: this commit's own entry holds only its newest records.
            let mut seen: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut examined = 0;
            let mut more = false;
            for row in log.range(sweep..first_new).map_err(wr)? {
                if examined >= budget {
                    more = true;
                    break;
                }
                let (k, v) = row.map_err(wr)?;
                examined += records(v.value()).count();
                seen.push((k.value(), v.value().to_vec()));
            }
            // Past the end: the next pass starts again from the oldest entry.
            sweep = match (more, seen.last()) {
                (true, Some((k, _))) => k + 1,
                _ => 0,
            };
            // A record is stale when a newer one of its address is durable or is in this
            // commit (it commits together with the deletion).
            let mut mine: Vec<u32> = written.iter().map(|(ip, _)| *ip).collect();
            mine.sort_unstable();
            let d = durable_lock(durable);
            let stale = |rec: &[u8]| {
                // An unreadable record is kept: nothing says it was superseded.
                match (codec::decode_seq(rec), codec::decode_ip(rec)) {
                    (Ok(s), Ok(ip)) => {
                        let ip = u32::from(ip);
                        mine.binary_search(&ip).is_ok() || d.newest.get(&ip).is_some_and(|n| *n > s)
                    }
                    _ => false,
                }
            };
            let mut rewrites: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
            for (k, v) in &seen {
                let all = records(v).count();
                let mut kept = Vec::new();
                let mut n_kept = 0;
                for rec in records(v).filter(|r| !stale(r)) {
                    push_record(&mut kept, rec);
                    n_kept += 1;
                }
                if n_kept < all {
                    deleted += (all - n_kept) as u64;
                    rewrites.push((*k, (n_kept > 0).then_some(kept)));
                }
            }
            drop(d);
            for (k, kept) in rewrites {
                match kept {
                    Some(kept) => {
                        log.insert(k, kept.as_slice()).map_err(wr)?;
                    }
                    None => {
                        log.remove(k).map_err(wr)?;
                    }
                }
            }
        }
    }
    // Durability::Immediate is redb's default; set it anyway: it is the promise we make.
    let mut txn = txn;
    txn.set_durability(redb::Durability::Immediate);
    let t = Instant::now();
    txn.commit().map_err(wr)?;
    Ok(Written {
        ends,
        flush: t.elapsed(),
        written,
        deleted,
        sweep,
    })
}

/// Does `remote` replace `local`? The greater in [`Lease::merge_order`] wins: the newer
/// change, and on a tie of `updated_ms` the same winner on both nodes. An identical copy
/// changes nothing, so merging the same lease twice is a no-op.
fn remote_wins(local: Option<&Lease>, remote: &Lease) -> bool {
    local.is_none_or(|l| remote.merge_order(l) == std::cmp::Ordering::Greater)
}

/// `loser` released because the same client's `winner` binding stays. Later than `loser` by
/// at least 1 ms, so it wins over `loser` on the peer as well, whatever the tie-break; and
/// computed from the two leases alone, so both nodes that meet the pair derive the same
/// release.
fn released_by(loser: &Lease, winner: &Lease) -> Lease {
    Lease {
        state: LeaseState::Released,
        updated_ms: winner.updated_ms.max(loser.updated_ms + 1),
        ..loser.clone()
    }
}

fn same_client(a: &Lease, b: &Lease) -> bool {
    match (&a.client_id, &b.client_id) {
        (Some(x), Some(y)) => x == y,
        _ => a.mac == b.mac,
    }
}

impl LeaseLog for LeaseStore {
    fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    fn changes_since(&self, seq: u64, limit: usize) -> Result<Vec<(u64, Lease)>, LeaseLogError> {
        // Taken before the snapshot: a record skipped as superseded below has its successor
        // in the snapshot (the writer records a commit here only after it is durable).
        let d = durable_lock(&self.durable);
        let r = self.db.begin_read().map_err(rd)?;
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
                let s = codec::decode_seq(rec).map_err(rd)?;
                if s <= seq {
                    continue;
                }
                let ip = codec::decode_ip(rec).map_err(rd)?;
                if d.newest.get(&u32::from(ip)).is_some_and(|n| *n > s) {
                    continue;
                }
                let (lease, _) = codec::decode(rec).map_err(rd)?;
                out.push((s, lease));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
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
    /// Merges `remote` into the index (the greater in [`Lease::merge_order`] wins; one active
    /// address per client and subnet) and submits what changed to the writer; the commit is
    /// the caller's to wait for.
    fn stage_remote(&self, remote: &[Lease]) -> (Vec<Lease>, Option<PendingCommit>) {
        let mut ix = self.index();
        let mut changed: Vec<Lease> = Vec::with_capacity(remote.len());
        // Where each address sits in `changed`: a later change of it replaces the earlier
        // one there (a retain per lease made a frame of 48 leases cost O(n²)).
        let mut at: HashMap<Ipv4Addr, usize> = HashMap::with_capacity(remote.len());
        fn put(changed: &mut Vec<Lease>, at: &mut HashMap<Ipv4Addr, usize>, l: Lease) {
            match at.get(&l.ip) {
                Some(&i) => changed[i] = l,
                None => {
                    at.insert(l.ip, changed.len());
                    changed.push(l);
                }
            }
        }
        for r in remote {
            let local = ix.get(r.ip);
            if !remote_wins(local, r) {
                continue;
            }
            // A renewal of what this side already has (the address bound to the same client)
            // cannot leave the client with a second active address: any other one would
            // already have been released when this binding was merged.
            let renewal = local.is_some_and(|l| l.state == LeaseState::Active && same_client(l, r));
            // The same client cannot hold two active addresses in one subnet: of its bindings
            // here and the incoming one, the greatest in merge order stays and the others are
            // released, whichever of them arrived first, so both nodes keep the same one.
            let mut incoming = r.clone();
            if r.state == LeaseState::Active && !renewal {
                let rivals: Vec<Lease> = ix
                    .by_mac(&r.mac)
                    .chain(r.client_id.as_deref().map_or_else(
                        || Box::new(std::iter::empty()) as Box<dyn Iterator<Item = &Lease>>,
                        |c| Box::new(ix.by_client_id(c)),
                    ))
                    .filter(|l| {
                        l.ip != r.ip
                            && l.state == LeaseState::Active
                            && l.subnet == r.subnet
                            && same_client(l, r)
                    })
                    .cloned()
                    .collect();
                let stronger = rivals
                    .iter()
                    .filter(|l| l.merge_order(r) == std::cmp::Ordering::Greater)
                    .max_by(|a, b| a.merge_order(b));
                match stronger {
                    Some(w) => incoming = released_by(r, w),
                    None => {
                        for s in &rivals {
                            let s = released_by(s, r);
                            ix.upsert(s.clone());
                            put(&mut changed, &mut at, s);
                        }
                    }
                }
            }
            ix.upsert(incoming.clone());
            put(&mut changed, &mut at, incoming);
        }
        if changed.is_empty() {
            return (changed, None);
        }
        let pending = self.submit_job(changed.clone(), true);
        (changed, Some(pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(last: u8, mac: u8, updated_ms: u64) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: [2, 0, 0, 0, 0, mac],
            client_id: None,
            hostname: Some(format!("h{mac}")),
            subnet: "10.0.0.0/24".into(),
            state: LeaseState::Active,
            start: 1,
            expiry: 4_000_000_000,
            updated_ms,
            relay_info: None,
        }
    }

    /// Writes into a database file directly, as an older version (or another tool) would.
    fn write_raw(path: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
        let db = Database::create(path).expect("raw open");
        let txn = db.begin_write().expect("txn");
        f(&txn);
        txn.commit().expect("commit");
    }

    fn table_names(path: &Path) -> Vec<String> {
        let db = Database::create(path).expect("raw open");
        let r = db.begin_read().expect("read");
        let names = r
            .list_tables()
            .expect("tables")
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        names
    }

    /// Records in the log, superseded ones included (read from disk, not the writer's count).
    fn log_len(store: &LeaseStore) -> u64 {
        let r = store.db.begin_read().expect("read");
        let t = r.open_table(LOG).expect("log");
        t.iter()
            .expect("iter")
            .map(|row| records(row.expect("row").1.value()).count() as u64)
            .sum()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn committed_leases_survive_reopen_with_indexes_and_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.redb");
        {
            let store = LeaseStore::open(&path).expect("open");
            rt().block_on(async {
                store
                    .put(vec![lease(10, 1, 1), lease(11, 2, 1)])
                    .await
                    .expect("put");
                let mut moved = lease(12, 1, 2);
                moved.client_id = Some(vec![9, 9]);
                store.put(vec![moved]).await.expect("put");
            });
            assert_eq!(store.watermark(), 3);
        }
        let store = LeaseStore::open(&path).expect("reopen");
        assert_eq!(store.watermark(), 3);
        assert_eq!(store.index().len(), 3);
        let mut ips: Vec<Ipv4Addr> = store
            .index()
            .by_mac(&[2, 0, 0, 0, 0, 1])
            .map(|l| l.ip)
            .collect();
        ips.sort();
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 12)]
        );
        assert_eq!(
            store
                .index()
                .by_client_id(&[9, 9])
                .map(|l| l.ip)
                .collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 12)]
        );
    }

    #[test]
    fn index_tables_of_older_versions_are_dropped_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.redb");
        {
            let store = LeaseStore::open(&path).expect("open");
            rt().block_on(async { store.put(vec![lease(10, 1, 1)]).await.expect("put") });
        }
        // What an older version left: on-disk client indexes and their checkpoint mark.
        write_raw(&path, |txn| {
            let mut m = txn.open_table(LEGACY_BY_MAC).expect("by_mac");
            m.insert([2u8, 0, 0, 0, 0, 1, 10, 0, 0, 10].as_slice(), ())
                .expect("by_mac");
            txn.open_table(LEGACY_BY_CLIENT_ID).expect("by_client_id");
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(LEGACY_INDEXED_SEQ, 1).expect("meta");
        });
        let store = LeaseStore::open(&path).expect("reopen");
        assert_eq!(store.index().by_mac(&[2, 0, 0, 0, 0, 1]).count(), 1);
        drop(store);
        let names = table_names(&path);
        assert!(
            !names.iter().any(|n| n == "by_mac" || n == "by_client_id"),
            "{names:?}"
        );
        let db = Database::create(&path).expect("raw open");
        let r = db.begin_read().expect("read");
        let meta = r.open_table(META).expect("meta");
        assert!(meta.get(LEGACY_INDEXED_SEQ).expect("meta").is_none());
    }

    #[test]
    fn a_database_of_the_older_layout_is_converted_keeping_sequence_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.redb");
        // What the previous version wrote: records keyed by address, the change log by
        // sequence. .10 was written at 1 and again at 3, .11 at 2.
        write_raw(&path, |txn| {
            let mut leases = txn.open_table(LEGACY_LEASES).expect("leases");
            let mut changes = txn.open_table(LEGACY_CHANGES).expect("changes");
            let ten = lease(10, 1, 30);
            let eleven = lease(11, 2, 20);
            leases
                .insert(u32::from(ten.ip), codec::encode(&ten, 3).as_slice())
                .expect("insert");
            leases
                .insert(u32::from(eleven.ip), codec::encode(&eleven, 2).as_slice())
                .expect("insert");
            changes.insert(3, u32::from(ten.ip)).expect("insert");
            changes.insert(2, u32::from(eleven.ip)).expect("insert");
        });
        let store = LeaseStore::open(&path).expect("open converts");
        assert_eq!(store.watermark(), 3);
        assert_eq!(store.index().len(), 2);
        let all = store.changes_since(0, 100).expect("changes");
        assert_eq!(
            all.iter().map(|(s, l)| (*s, l.ip)).collect::<Vec<_>>(),
            vec![
                (2, Ipv4Addr::new(10, 0, 0, 11)),
                (3, Ipv4Addr::new(10, 0, 0, 10))
            ]
        );
        assert_eq!(all[1].1, lease(10, 1, 30));
        // New writes continue after the old sequence numbers.
        rt().block_on(async { store.put(vec![lease(12, 3, 40)]).await.expect("put") });
        assert_eq!(store.watermark(), 4);
        drop(store);
        let names = table_names(&path);
        assert!(
            !names.iter().any(|n| n == "leases" || n == "changes"),
            "{names:?}"
        );
    }

    #[test]
    fn a_database_of_the_first_log_layout_is_converted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.redb");
        write_raw(&path, |txn| {
            let mut log = txn.open_table(LEGACY_LOG).expect("lease_log");
            // .10 at 1 (superseded) and 3, .11 at 2.
            for (seq, l) in [
                (1, lease(10, 1, 10)),
                (2, lease(11, 2, 20)),
                (3, lease(10, 1, 30)),
            ] {
                log.insert(seq, codec::encode(&l, seq).as_slice())
                    .expect("insert");
            }
        });
        let store = LeaseStore::open(&path).expect("open converts");
        assert_eq!(store.watermark(), 3);
        assert_eq!(
            store.index().get(Ipv4Addr::new(10, 0, 0, 10)),
            Some(&lease(10, 1, 30))
        );
        let seqs: Vec<u64> = store
            .changes_since(0, 100)
            .expect("changes")
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(seqs, vec![2, 3]);
        drop(store);
        assert!(!table_names(&path).iter().any(|n| n == "lease_log"));
    }

    #[test]
    fn one_commit_is_one_entry_and_reads_start_inside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LeaseStore::open(&dir.path().join("l.redb")).expect("open");
        rt().block_on(async {
            store
                .put(vec![lease(10, 1, 1), lease(11, 2, 1), lease(12, 3, 1)])
                .await
                .expect("put")
        });
        assert_eq!(log_len(&store), 3);
        let r = store.db.begin_read().expect("read");
        assert_eq!(
            redb::ReadableTableMetadata::len(&r.open_table(LOG).expect("log")).expect("len"),
            1,
            "one entry per commit"
        );
        let after_one: Vec<u64> = store
            .changes_since(1, 100)
            .expect("changes")
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(after_one, vec![2, 3]);
        assert_eq!(store.changes_since(0, 2).expect("changes").len(), 2);
        assert_eq!(
            store
                .read_durable(Ipv4Addr::new(10, 0, 0, 11))
                .expect("read"),
            Some(lease(11, 2, 1))
        );
    }

    #[test]
    fn rewrites_are_compacted_and_the_newest_of_each_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.redb");
        let live = 20u8;
        let rounds = 150u64; // 3,000 records written for 20 addresses
        {
            let store = LeaseStore::open(&path).expect("open");
            rt().block_on(async {
                for r in 1..=rounds {
                    let batch: Vec<Lease> = (0..live).map(|i| lease(i + 1, i, r)).collect();
                    store.put(batch).await.expect("put");
                }
            });
            let on_disk = log_len(&store);
            // Bounded by the trigger (2 x live + slack) plus one commit's appends.
            assert!(
                on_disk <= 2 * u64::from(live) + COMPACT_SLACK + u64::from(live),
                "{on_disk} records on disk for {live} leases: compaction did not keep up"
            );
            // Every record written and no longer on disk was counted as compacted.
            assert_eq!(
                store.metrics.compacted.get(),
                rounds * u64::from(live) - on_disk
            );
            assert_eq!(store.durable_len().expect("len"), u64::from(live));
            let all = store.changes_since(0, 1000).expect("changes");
            assert_eq!(all.len(), usize::from(live), "each lease once");
            assert!(all.iter().all(|(_, l)| l.updated_ms == rounds));
        }
        let store = LeaseStore::open(&path).expect("reopen");
        assert_eq!(store.watermark(), rounds * u64::from(live));
        assert_eq!(store.index().len(), usize::from(live));
        for i in 0..live {
            let l = store
                .index()
                .get(Ipv4Addr::new(10, 0, 0, i + 1))
                .cloned()
                .expect("present");
            assert_eq!(
                l.updated_ms,
                rounds,
                "an older record came back at .{}",
                i + 1
            );
        }
    }

    #[test]
    fn concurrent_commits_are_batched_and_all_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LeaseStore::open(&dir.path().join("l.redb")).expect("open");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..200u32 {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i);
                    let mut l = lease(0, (i % 250) as u8, 1);
                    l.ip = ip;
                    s.put(vec![l]).await
                }));
            }
            for t in tasks {
                t.await.expect("join").expect("commit");
            }
        });
        assert_eq!(store.durable_len().expect("len"), 200);
        assert_eq!(store.watermark(), 200);
        // The burst queues while the first transaction's fsync runs, and everything queued
        // goes into the next one (MAX_BATCH is far above 200): a couple of transactions.
        // A tenth of the jobs leaves room for a loaded machine preempting the spawning
        // loop for a commit's length a dozen times; one transaction per few jobs is a
        // batching that does not work.
        let commits = store.metrics.commits.get();
        assert!(
            (1..=20).contains(&commits),
            "200 concurrent commits took {commits} transactions"
        );
        assert_eq!(store.metrics.leases_written.get(), 200);
    }

    #[test]
    fn changes_since_returns_each_lease_once_at_its_newest_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LeaseStore::open(&dir.path().join("l.redb")).expect("open");
        rt().block_on(async {
            store.put(vec![lease(10, 1, 1)]).await.expect("put");
            store.put(vec![lease(11, 2, 1)]).await.expect("put");
            let mut rel = lease(10, 1, 5);
            rel.state = LeaseState::Released;
            store.put(vec![rel]).await.expect("put");
        });
        let all = store.changes_since(0, 100).expect("changes");
        let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(all[1].1.state, LeaseState::Released);
        assert_eq!(store.changes_since(2, 100).expect("changes").len(), 1);
        assert_eq!(store.changes_since(0, 1).expect("changes").len(), 1);
        assert!(store.changes_since(3, 100).expect("changes").is_empty());
    }

    #[test]
    fn apply_remote_keeps_the_newer_change_and_one_address_per_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LeaseStore::open(&dir.path().join("l.redb")).expect("open");
        rt().block_on(async {
            store
                .put(vec![lease(10, 1, 100), lease(20, 7, 100)])
                .await
                .expect("put");
        });
        // Older remote copy of .10 for another client: ignored.
        let older = lease(10, 2, 50);
        // Newer binding of client 7 at .21: .20 must be released, not left active too.
        let moved = lease(21, 7, 200);
        let changed = store.apply_remote(&[older, moved]).expect("apply");
        let ips: Vec<Ipv4Addr> = changed.iter().map(|l| l.ip).collect();
        assert!(ips.contains(&Ipv4Addr::new(10, 0, 0, 21)), "{ips:?}");
        assert!(ips.contains(&Ipv4Addr::new(10, 0, 0, 20)), "{ips:?}");
        assert!(!ips.contains(&Ipv4Addr::new(10, 0, 0, 10)), "{ips:?}");
        let ten = store
            .read_durable(Ipv4Addr::new(10, 0, 0, 10))
            .expect("read")
            .expect("present");
        assert_eq!(
            ten.mac[5], 1,
            "older remote lease overwrote a newer local one"
        );
        let twenty = store
            .read_durable(Ipv4Addr::new(10, 0, 0, 20))
            .expect("read")
            .expect("present");
        assert_eq!(twenty.state, LeaseState::Released);
        // Merging the same leases again is a no-op.
        assert!(store
            .apply_remote(&[lease(21, 7, 200)])
            .expect("apply")
            .is_empty());
    }

    #[test]
    fn expiry_frees_due_leases_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LeaseStore::open(&dir.path().join("l.redb")).expect("open");
        rt().block_on(async {
            let mut due = lease(10, 1, 1);
            due.expiry = 50;
            store.put(vec![due, lease(11, 2, 1)]).await.expect("put");
            let gone = store.expire_due(100).await.expect("expire");
            assert_eq!(gone.len(), 1);
            assert_eq!(gone[0].ip, Ipv4Addr::new(10, 0, 0, 10));
        });
        let l = store
            .read_durable(Ipv4Addr::new(10, 0, 0, 10))
            .expect("read")
            .expect("present");
        assert_eq!(l.state, LeaseState::Expired);
    }
}

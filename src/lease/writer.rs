//! The lease writer: one thread that makes every change durable by group commit, and the
//! sweep that keeps the append-only log within about twice the live set.
//!
//! **Group commit.** Every write goes to this thread. It takes whatever is queued, writes it
//! in one redb transaction with `Durability::Immediate`, and only then completes each
//! caller's future. While one transaction is being fsynced the next batch queues up, so the
//! cost of an fsync is shared by every ACK that arrived meanwhile, and a caller that sends its
//! DHCPACK after its commit resolves never acknowledges a lease that is not on disk.
//!
//! **Sweep.** Superseded records are deleted inside the regular commits whenever the log
//! holds more than twice the live records (plus [`COMPACT_SLACK`]): it walks the entries from
//! the oldest end, a bounded number of records per commit ([`SWEEP_PER_LEASE`] per lease
//! written), and rewrites each entry without its stale records (or deletes it), so no commit
//! is held up by a big clean-up.
//!
//! **Failure.** A commit that fails puts the store into the failed state ([`super::fault`]):
//! the database is closed, later jobs are refused without a try, and the writer reopens it
//! with a backoff until a test write is durable.
//!
//! Invariants: jobs are written in the order they were submitted; the watermark only moves
//! after a commit is durable; the sweep never deletes the newest record of an address (so
//! the last record of the log is always live and the watermark survives a restart);
//! [`Durable::newest`] is updated after each commit under its lock.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
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
use super::fault::{self, Backoff, StoreCondition};
use super::store::Shared;
use super::Lease;

/// First sequence number of a commit → that commit's records (see [`codec::push_record`]).
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("lease_batches");

/// The sweep starts when the log holds more than twice the live records plus this many.
pub(super) const COMPACT_SLACK: u64 = 1024;

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
/// CPU per exchange at 4,000/s. An HA node raises it ([`super::LeaseStore::set_batch_target`]).
pub const BATCH_TARGET: usize = 12;

/// The batch target of an HA node: at 16,000 ACKs/s a commit every ~2.5 ms (the 2 ms cap)
/// instead of every ~1 ms, so the standby gets a third of the frames, merges and fsyncs.
/// Below ~6,000 ACKs/s both targets give the same 2 ms linger.
pub const BATCH_TARGET_REPLICATED: usize = 48;

/// Why a change was not made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The group commit that carried it failed; every job in it gets the same error.
    #[error("{0}")]
    Commit(Arc<redb::Error>),
    /// The store is failed (an earlier commit failed) and was not tried: see [`super::fault`].
    #[error("the lease database is failed: {0}")]
    StoreFailed(Arc<str>),
}

impl WriteError {
    /// The store refused it without trying (the failure was logged once, when it began).
    pub fn store_failed(&self) -> bool {
        matches!(self, WriteError::StoreFailed(_))
    }
}

/// Store metrics, registered on the daemon's registry by [`StoreMetrics::register`].
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
    /// 1 while the store is failed (a commit failed, not yet reopened and probed).
    pub failed: Gauge,
    /// Times the store went failed.
    pub failures: Counter,
    /// Size of the database file, and free space on its filesystem (bytes).
    pub db_bytes: Gauge,
    pub fs_free_bytes: Gauge,
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
            failed: Gauge::default(),
            failures: Counter::default(),
            db_bytes: Gauge::default(),
            fs_free_bytes: Gauge::default(),
        }
    }
}

impl StoreMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let m = self;
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
        registry.register(
            "lease_store_failed",
            "1 while the lease database cannot be written (a commit failed; reopening with backoff)",
            m.failed.clone(),
        );
        registry.register(
            "lease_store_failures",
            "Times the lease database went from writable to failed",
            m.failures.clone(),
        );
        registry.register(
            "lease_db_size_bytes",
            "Size of the lease database file",
            m.db_bytes.clone(),
        );
        registry.register(
            "lease_db_filesystem_free_bytes",
            "Space available to the daemon on the lease database's filesystem",
            m.fs_free_bytes.clone(),
        );
    }
}

/// redb's error is 160 bytes: boxed, a `Result` stays small on the paths that succeed.
pub(super) fn boxed<E: Into<redb::Error>>(e: E) -> Box<redb::Error> {
    Box::new(e.into())
}

pub(super) type Done = oneshot::Sender<Result<u64, WriteError>>;

/// One caller's leases, queued for the next group commit.
pub(super) struct Job {
    pub leases: Vec<Lease>,
    pub queued: Instant,
    pub done: Done,
    /// A merge of the peer's leases: it never waits for company (see `writer_loop`).
    pub remote: bool,
    /// The store's generation when the job was submitted (under the index lock). A heal
    /// reloads the index and bumps it: a job of an older generation belongs to an index that
    /// no longer exists and is refused.
    pub generation: u64,
}

/// Hashes an IPv4 address (as `u32`) with one multiply. The writer updates its map for every
/// lease it writes, where SipHash cost more than the B-tree insert. Seeded per process, and
/// addresses come from the configured pools, so nobody can line up collisions.
#[derive(Clone, Copy)]
pub(super) struct IpHash(u64);

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

pub(super) struct IpHasher(u64);

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

pub(super) type NewestMap = HashMap<u32, u64, IpHash>;

/// What is on disk, as the writer left it after its last commit.
pub(super) struct Durable {
    /// Address → sequence number of its newest record in the log.
    pub newest: NewestMap,
    /// Records in the log, superseded ones included.
    pub records: u64,
}

pub(super) fn durable_lock(d: &Mutex<Durable>) -> MutexGuard<'_, Durable> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// The records of a log entry, in sequence order. A truncated tail ends the list (the
/// records before it are still good; each is checked when decoded).
pub(super) fn records(entry: &[u8]) -> impl Iterator<Item = &[u8]> {
    codec::records(entry).map_while(Result::ok)
}

/// Starts the writer thread on the store's database, whose log ends at sequence `seq`.
/// Commits complete from the caller's tokio runtime when there is one (see `complete`).
pub(super) fn spawn(
    shared: Arc<Shared>,
    seq: u64,
) -> std::io::Result<(std_mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std_mpsc::channel();
    let rt = tokio::runtime::Handle::try_current().ok();
    let thread = std::thread::Builder::new()
        .name("lease-writer".into())
        .spawn(move || writer_loop(&shared, rt.as_ref(), rx, seq))?;
    Ok((tx, thread))
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

/// The writer while the store is failed: why, and when it next tries to reopen.
struct Failed {
    reason: Arc<str>,
    retry_at: Instant,
}

fn refuse(job: Job, reason: &Arc<str>) {
    let _ = job.done.send(Err(WriteError::StoreFailed(reason.clone())));
}

fn writer_loop(
    s: &Shared,
    rt: Option<&tokio::runtime::Handle>,
    rx: std_mpsc::Receiver<Job>,
    mut seq: u64,
) {
    let m = &s.metrics;
    // Where the compaction sweep goes on (sequence numbers; 0: from the oldest record).
    let mut sweep = 0u64;
    let mut busy = false;
    // Leases per second arriving, smoothed over the last transactions (0: unknown).
    let mut rate = 0.0f64;
    let mut last_start: Option<Instant> = None;
    let mut last_end: Option<Instant> = None;
    let mut failed: Option<Failed> = None;
    let mut backoff = Backoff::default();
    loop {
        let first = match &failed {
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
            Some(f) => {
                match rx.recv_timeout(f.retry_at.saturating_duration_since(Instant::now())) {
                    // Not tried: redb refuses every transaction after an I/O error anyway.
                    Ok(j) => refuse(j, &f.reason),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => match heal(s) {
                        Ok(end) => {
                            seq = end;
                            sweep = 0;
                            backoff.healed(Instant::now());
                            failed = None;
                            m.failed.set(0);
                            tracing::warn!(
                                path = %s.path.display(),
                                event = "store.healed",
                                "lease database {} is writable again (reopened, test write durable); {} leases loaded",
                                s.path.display(),
                                s.index().len()
                            );
                            s.condition.send_replace(StoreCondition::Writable);
                        }
                        Err(why) => {
                            tracing::debug!(
                                "lease database {}: reopen failed: {why}",
                                s.path.display()
                            );
                            let wait = backoff.retry();
                            if let Some(f) = failed.as_mut() {
                                f.retry_at = Instant::now() + wait;
                            }
                        }
                    },
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
        };
        let generation = s.generation.load(Ordering::Acquire);
        if first.generation != generation {
            refuse(
                first,
                &Arc::from("the database was reopened after a failure"),
            );
            continue;
        }
        let mut n = first.leases.len();
        let streaming =
            last_end.is_some_and(|e| first.queued.saturating_duration_since(e) < LINGER);
        let target = s.batch_target.load(Ordering::Relaxed);
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
                Ok(j) if j.generation != generation => {
                    refuse(j, &Arc::from("the database was reopened after a failure"))
                }
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
        let result = match s.db() {
            Some(db) => write_batch(&db, &jobs, &mut seq, &s.durable, sweep),
            None => Err(boxed(redb::Error::PreviousIo)),
        };
        match result {
            Ok(w) => {
                {
                    let mut d = durable_lock(&s.durable);
                    for (ip, sq) in w.written {
                        d.newest.insert(ip, sq);
                    }
                    d.records = d.records + n as u64 - w.deleted;
                    m.log_records.set(d.records as i64);
                }
                sweep = w.sweep;
                m.compacted.inc_by(w.deleted);
                let (ends, flush) = (w.ends, w.flush);
                m.flush_seconds.observe(flush.as_secs_f64());
                s.watermark.store(seq, Ordering::Release);
                m.commits.inc();
                m.leases_written.inc_by(n as u64);
                m.commit_seconds.observe(t.elapsed().as_secs_f64());
                m.batch_leases.observe(n as f64);
                complete(rt, jobs.into_iter().map(|j| j.done).zip(ends).collect());
                last_end = Some(Instant::now());
            }
            Err(e) => {
                seq = start_seq;
                let reason: Arc<str> = Arc::from(fault::reason(&e));
                let e = WriteError::Commit(Arc::from(e));
                // redb refuses every later transaction until the file is closed: close it
                // now (readers get "failed" instead of the same error) and reopen later.
                s.db.write().unwrap_or_else(|p| p.into_inner()).take();
                let wait = backoff.failed(Instant::now());
                m.failed.set(1);
                m.failures.inc();
                // One line per change of state; the refused requests after it are counted
                // (`athena_dhcp_commit_failed_total`), not logged.
                tracing::error!(
                    path = %s.path.display(),
                    leases = n,
                    event = "store.failed",
                    reason = %reason,
                    "lease database {} cannot be written: {reason}; no lease is acknowledged until it is (commit of {n} leases failed; reopening with backoff)",
                    s.path.display()
                );
                s.condition.send_replace(StoreCondition::Failed {
                    reason: reason.to_string(),
                });
                // Only now: whoever sees its commit fail finds the store failed already.
                for job in jobs {
                    let _ = job.done.send(Err(e.clone()));
                }
                failed = Some(Failed {
                    reason,
                    retry_at: Instant::now() + wait,
                });
            }
        }
    }
}

/// Reopens the closed database, proves it takes a durable write, reloads the index from it
/// (dropping what failed commits left in memory) and makes it the store's database again.
/// Returns the log's last sequence number.
fn heal(s: &Shared) -> Result<u64, String> {
    let db = fault::open_db(&s.path).map_err(|e| e.to_string())?;
    fault::probe(&s.path, &db).map_err(|e| fault::reason(&e))?;
    let (index, durable, watermark) = super::store::load(&db).map_err(|e| e.to_string())?;
    let records = durable.records;
    {
        // Under the index lock: a job submitted from here on is of the new generation and
        // sees the reloaded index; every older one is refused (see `Job::generation`).
        let mut ix = s.index();
        *ix = index;
        *durable_lock(&s.durable) = durable;
        s.watermark.store(watermark, Ordering::Release);
        s.generation.fetch_add(1, Ordering::AcqRel);
        *s.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
    }
    s.metrics.log_records.set(records as i64);
    Ok(watermark)
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
) -> Result<Written, Box<redb::Error>> {
    let txn = db.begin_write().map_err(boxed)?;
    let mut ends = Vec::with_capacity(jobs.len());
    let mut written = Vec::new();
    let mut deleted = 0u64;
    {
        let mut log = txn.open_table(LOG).map_err(boxed)?;
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
            log.insert(first_new, entry.as_slice()).map_err(boxed)?;
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
            for row in log.range(sweep..first_new).map_err(boxed)? {
                if examined >= budget {
                    more = true;
                    break;
                }
                let (k, v) = row.map_err(boxed)?;
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
                        log.insert(k, kept.as_slice()).map_err(boxed)?;
                    }
                    None => {
                        log.remove(k).map_err(boxed)?;
                    }
                }
            }
        }
    }
    // Durability::Immediate is redb's default; set it anyway: it is the promise we make.
    let mut txn = txn;
    txn.set_durability(redb::Durability::Immediate);
    let t = Instant::now();
    txn.commit().map_err(boxed)?;
    Ok(Written {
        ends,
        flush: t.elapsed(),
        written,
        deleted,
        sweep,
    })
}

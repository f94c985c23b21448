//! What the store does when its disk fails, and how it finds a way back.
//!
//! A commit that fails (ENOSPC, EIO, EROFS, any redb error) puts the store into the failed
//! state: redb refuses every later transaction ("Previous I/O error occurred") until the file
//! is closed and opened again, so the writer stops trying, fails each job at once, and reopens
//! the database with a backoff, probing each reopen with a test write that must grow into free
//! space. Only when that write is durable is the store writable again. What the index held
//! beyond the disk (changes whose commit failed: never acknowledged to anyone) is dropped by
//! reloading the index from the reopened file.
//!
//! Opening a damaged file must never take the process down: redb asserts on some malformed
//! headers, so every open runs under `catch_unwind` (see [`open_db`]).

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};

use super::writer::boxed;

/// redb page cache (bytes). Lookups come from the in-memory index, so redb's page cache only
/// needs the pages a commit touches; its 1 GiB default would let RSS grow with the file.
const REDB_CACHE: usize = 1 << 20;

/// Whether the store can make changes durable. Published on a watch channel by the writer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreCondition {
    #[default]
    Writable,
    /// The last commit failed and the database has not been reopened and probed since.
    Failed { reason: String },
}

impl StoreCondition {
    pub fn failure(&self) -> Option<&str> {
        match self {
            StoreCondition::Writable => None,
            StoreCondition::Failed { reason } => Some(reason),
        }
    }
}

/// The probe's table: one small value rewritten on each reopen after a failure.
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("write_probe");

/// The probe file's size: room for a good many commits. Without it, a disk that is still
/// full would pass a probe committed into free pages and fail again on the next commit that
/// grows the file: the node would flap between FAULT and serving.
const PROBE_BYTES: usize = 256 << 10;

/// First and longest wait between two reopen attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A store that stayed writable this long after a heal starts its next backoff afresh; one
/// that fails again sooner (a disk that is nearly full) keeps doubling, so the node does not
/// bounce the service between the pair every few hundred milliseconds.
const STABLE: Duration = Duration::from_secs(60);

/// The wait before the next reopen attempt.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
    healed_at: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_MIN,
            healed_at: None,
        }
    }
}

impl Backoff {
    /// The store just failed: how long until the first reopen.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let recent = self
            .healed_at
            .is_some_and(|t| now.saturating_duration_since(t) < STABLE);
        if !recent {
            self.next = BACKOFF_MIN;
        }
        self.next
    }

    /// A reopen did not work: the wait before the next one.
    pub fn retry(&mut self) -> Duration {
        self.next = (self.next * 2).min(BACKOFF_MAX);
        self.next
    }

    /// The store is writable again (the backoff keeps growing if it fails again soon).
    pub fn healed(&mut self, now: Instant) {
        self.healed_at = Some(now);
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }
}

/// Why a database file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// redb refused it (I/O, already open, a format it reports as such).
    #[error("{0}")]
    Redb(Box<redb::Error>),
    /// redb panicked reading it: the file is not a database this version can read.
    #[error("the file is damaged or not a lease database ({0})")]
    Damaged(String),
}

impl OpenError {
    /// The file itself is unreadable (as opposed to the disk or the process failing): moving
    /// it aside is the way out.
    pub fn is_damaged(&self) -> bool {
        match self {
            OpenError::Damaged(_) => true,
            OpenError::Redb(e) => is_damage(e),
        }
    }
}

/// A redb error that says the file itself is bad, not the disk or the process: redb reports
/// a header it cannot parse as an I/O error of kind `InvalidData`.
pub(super) fn is_damage(e: &redb::Error) -> bool {
    match e {
        redb::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_) => true,
        _ => false,
    }
}

/// Opens (or creates) `path` with the store's cache size. A panic inside redb (it asserts on
/// some malformed headers) becomes [`OpenError::Damaged`], reported without a backtrace.
pub(super) fn open_db(path: &Path) -> Result<Database, OpenError> {
    let open = || Database::builder().set_cache_size(REDB_CACHE).create(path);
    match quiet_catch_unwind(open) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(OpenError::Redb(boxed(e))),
        Err(msg) => Err(OpenError::Damaged(msg)),
    }
}

/// Runs `f`, turning a panic into its message. The panic hook stays silent for this thread
/// only while `f` runs: a damaged file is an error to report, not a crash with a backtrace.
pub(super) fn quiet_catch_unwind<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    use std::sync::{Arc, Mutex};
    type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;
    static HOOK_LOCK: Mutex<()> = Mutex::new(());
    let _g = HOOK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::thread::current().id();
    let prev: Arc<Hook> = Arc::new(std::panic::take_hook());
    let other = prev.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            other(info);
        }
    }));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let _ = std::panic::take_hook();
    let prev = Arc::try_unwrap(prev).unwrap_or_else(|a| Box::new(move |i| a(i)));
    std::panic::set_hook(prev);
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "redb panicked".to_string())
    })
}

/// Proof that the disk takes writes again: [`PROBE_BYTES`] written and fsynced to a file
/// next to the database (new blocks: redb could commit into free pages inside its file on a
/// disk that is still full), then one durable redb commit.
pub(super) fn probe(path: &Path, db: &Database) -> Result<(), Box<redb::Error>> {
    use std::io::Write;
    let mut name = path.as_os_str().to_os_string();
    name.push(".write-probe");
    let file = std::path::PathBuf::from(name);
    let written = std::fs::File::create(&file).and_then(|mut f| {
        f.write_all(&vec![0x5a_u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&file);
    written.map_err(|e| boxed(redb::Error::Io(e)))?;
    let mut txn = db.begin_write().map_err(boxed)?;
    txn.set_durability(redb::Durability::Immediate);
    {
        let mut t = txn.open_table(PROBE).map_err(boxed)?;
        t.insert("probe", &b"ok"[..]).map_err(boxed)?;
    }
    txn.commit().map_err(boxed)?;
    Ok(())
}

/// What a person reads for a failed write: the operating system's words when the cause is
/// an I/O error (`No space left on device`), else redb's.
pub(super) fn reason(e: &redb::Error) -> String {
    match e {
        redb::Error::Io(io) => io_reason(io),
        other => other.to_string(),
    }
}

/// `No space left on device`, without the "(os error 28)" a person does not need.
fn io_reason(io: &std::io::Error) -> String {
    let s = io.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_restarts_after_a_stable_spell() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.failed(t0), BACKOFF_MIN);
        let mut last = BACKOFF_MIN;
        for _ in 0..10 {
            let next = b.retry();
            assert!(next >= last && next <= BACKOFF_MAX);
            last = next;
        }
        assert_eq!(last, BACKOFF_MAX);
        b.healed(t0);
        // Failing again soon after a heal keeps the long wait: no flapping.
        assert_eq!(b.failed(t0 + Duration::from_secs(1)), BACKOFF_MAX);
        b.healed(t0 + Duration::from_secs(2));
        assert_eq!(b.failed(t0 + STABLE * 2), BACKOFF_MIN);
    }

    #[test]
    fn a_file_of_random_bytes_is_reported_as_damaged_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.redb");
        let bytes: Vec<u8> = (0..64 * 1024).map(|_| rand::random::<u8>()).collect();
        std::fs::write(&path, bytes).expect("write");
        let Err(err) = open_db(&path) else {
            panic!("random bytes opened as a database");
        };
        assert!(err.is_damaged(), "{err}");
    }

    #[test]
    fn a_truncated_database_is_reported_as_damaged_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.redb");
        {
            let db = open_db(&path).expect("create");
            probe(&path, &db).expect("probe");
        }
        let len = std::fs::metadata(&path).expect("meta").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(len / 3).expect("truncate");
        drop(f);
        match open_db(&path) {
            Ok(_) => {} // redb may repair a short file; what matters is no panic
            Err(e) => assert!(e.is_damaged(), "{e}"),
        }
    }

    #[test]
    fn an_io_reason_reads_like_the_operating_system_says_it() {
        let e = redb::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(reason(&e), "No space left on device");
    }
}

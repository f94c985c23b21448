//! Tests of the store: reopen, conversion of older layouts, log entries, compaction, group
//! commit, the HA change log, merges and expiry.

use super::*;
use crate::lease::migrate::{
    LEGACY_BY_CLIENT_ID, LEGACY_BY_MAC, LEGACY_CHANGES, LEGACY_INDEXED_SEQ, LEGACY_LEASES,
    LEGACY_LOG, META,
};
use crate::lease::writer::COMPACT_SLACK;
use crate::lease::LeaseState;

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
        classes: Vec::new(),
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
    let r = store.db().expect("db").begin_read().expect("read");
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
    let r = store.db().expect("db").begin_read().expect("read");
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
            store.metrics().compacted.get(),
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
    let commits = store.metrics().commits.get();
    assert!(
        (1..=20).contains(&commits),
        "200 concurrent commits took {commits} transactions"
    );
    assert_eq!(store.metrics().leases_written.get(), 200);
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

#[test]
fn the_ha_epoch_is_saved_with_the_leases_and_never_goes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.redb");
    {
        let store = LeaseStore::open(&path).expect("open");
        assert_eq!(store.saved_epoch(), 0, "a new database starts at 0");
        store.save_epoch(7).expect("save");
        store.save_epoch(3).expect("an older epoch arriving late");
        assert_eq!(store.saved_epoch(), 7);
    }
    let store = LeaseStore::open(&path).expect("reopen");
    assert_eq!(store.saved_epoch(), 7, "survives a restart");
}

/// Runs `f` on a thread with a mount namespace of its own (a slave of the host's: nothing
/// mounted there reaches the host) and a 4 MiB tmpfs at a fresh directory, passed to `f`.
/// Needs root; `None` (skipped) without.
fn on_small_tmpfs(f: impl FnOnce(&Path) + Send + 'static) -> Option<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return None;
    }
    let t = std::thread::spawn(move || {
        // SAFETY: plain syscalls on this thread; the strings outlive them.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
            let root = c"/";
            let r = libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            );
            assert_eq!(r, 0, "make / a slave");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let target =
            std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: as above.
        let r = unsafe {
            libc::mount(
                c"athena-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=4m".as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        f(dir.path());
        // SAFETY: as above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    });
    t.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    Some(())
}

#[test]
fn a_full_disk_fails_the_store_which_refuses_without_a_try_and_heals_to_its_durable_leases() {
    on_small_tmpfs(|dir| {
        let store = LeaseStore::open(&dir.join("l.redb")).expect("open");
        let rt = rt();
        rt.block_on(store.put(vec![lease(1, 1, 1)])).expect("put");
        let filler = dir.join("filler");
        let _ = std::fs::write(&filler, vec![0u8; 8 << 20]); // ENOSPC when full: expected
        let mut failed_ip = None;
        for i in 2..250u8 {
            if let Err(e) = rt.block_on(store.put(vec![lease(i, i, 2)])) {
                assert!(!e.store_failed(), "the first failure is a real try: {e}");
                failed_ip = Some(Ipv4Addr::new(10, 0, 0, i));
                break;
            }
        }
        let failed_ip = failed_ip.expect("no commit failed on a full disk");
        assert_eq!(store.failure().as_deref(), Some("No space left on device"));
        // Refused without a try: no transaction is attempted.
        let commits = store.metrics().commits.get();
        let e = rt
            .block_on(store.put(vec![lease(250, 250, 3)]))
            .expect_err("refused while failed");
        assert!(e.store_failed(), "{e}");
        assert_eq!(store.metrics().commits.get(), commits);
        assert_eq!(store.metrics().failed.get(), 1);

        std::fs::remove_file(&filler).expect("free the space");
        let t = Instant::now();
        while store.failure().is_some() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "never healed"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // What never became durable is gone from the index; what did is there.
        assert!(store.index().get(failed_ip).is_none(), "{failed_ip} kept");
        assert!(store.index().get(Ipv4Addr::new(10, 0, 0, 1)).is_some());
        rt.block_on(store.put(vec![lease(251, 251, 4)]))
            .expect("writes after the heal");
        assert!(store
            .read_durable(Ipv4Addr::new(10, 0, 0, 251))
            .expect("read")
            .is_some());
        assert_eq!(store.metrics().failed.get(), 0);
        assert_eq!(store.metrics().failures.get(), 1);
    });
}

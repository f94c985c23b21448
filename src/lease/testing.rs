//! A real [`LeaseStore`] in a temporary directory, for the tests of the modules built on it
//! (HA sync, HA nodes, merge properties): they run on the store's own merge rules ("one
//! active address per client", the tie-break), never on a double with rules of its own.

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::sync::Arc;

use super::{Lease, LeaseLog, LeaseStore};

/// A store that lives as long as its directory.
pub struct TempStore {
    /// Declared first: dropped (its writer joined) before the directory goes.
    store: Arc<LeaseStore>,
    _dir: tempfile::TempDir,
}

impl TempStore {
    /// Opens an empty store. On a runtime its commits complete from that runtime, as in the
    /// daemon; outside one, from the writer thread.
    pub fn new() -> TempStore {
        // tmpfs where there is one: every commit fsyncs, and the property tests make
        // thousands on a machine that other builds share.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("athena-leases-")
                .tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let store = LeaseStore::open(&dir.path().join("leases.redb")).expect("open lease store");
        TempStore { store, _dir: dir }
    }

    /// The store as HA sees it.
    pub fn log(&self) -> Arc<dyn LeaseLog> {
        self.store.clone()
    }

    /// A local change, as the DHCP server commits it (durable on return), from a thread that
    /// may block (not a runtime worker: use [`LeaseStore::put`] there).
    pub fn put_blocking(&self, leases: Vec<Lease>) -> u64 {
        let pending = {
            let mut ix = self.store.index();
            for l in &leases {
                ix.upsert(l.clone());
            }
            self.store.submit(leases)
        };
        pending.wait_blocking().expect("commit")
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<Lease> {
        self.store.index().get(ip).cloned()
    }

    pub fn len(&self) -> usize {
        self.store.index().len()
    }

    /// Every lease, by address: what two converged stores must agree on.
    pub fn all(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.store.index().iter().cloned().collect();
        v.sort_by_key(|l| l.ip);
        v
    }
}

impl Deref for TempStore {
    type Target = Arc<LeaseStore>;
    fn deref(&self) -> &Arc<LeaseStore> {
        &self.store
    }
}

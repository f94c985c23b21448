//! Shared helpers for integration tests. `netns` gives private network namespaces that are
//! removed on drop (also on panic), so root tests never touch the host's own interfaces;
//! `lab` builds the two-node failover lab on top of it.
#![allow(dead_code)]

pub mod chaos;
pub mod dhcp_lab;
pub mod ha_pair;
pub mod lab;
pub mod netns;

/// Serialises the tests whose assertions are timings (failover outages, takeover delays): the
/// test harness runs a binary's tests on parallel threads, and on a 2-core CI machine two
/// failover labs at once would measure each other. Hold the guard for the whole test.
pub fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next test must still run.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

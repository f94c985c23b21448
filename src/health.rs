//! Liveness of the workers that serve clients, for `/api/v1/health`, the systemd watchdog and
//! HA (a node whose DHCP or DNS worker is stuck must stop heartbeating and lose the VIP).
//!
//! A worker proves progress by calling [`Progress::tick`] from its loop (also when idle: the
//! loop wakes on a short timer), so a worker blocked forever on a lock or a full channel goes
//! stale even though the process as a whole is still alive. Components can also report a
//! standing problem (`VIP 10.0.0.3/24: interface "eth9" not found`) that degrades health, or
//! a fault (`eth0 has no carrier`) that also means this node cannot serve: HA then goes FAULT
//! and leaves the service to its peer, as keepalived does when its interface goes down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on a monotonic clock since the process started.
pub fn mono_ms() -> u64 {
    START.elapsed().as_millis() as u64
}

/// A worker's progress marker. Cheap to clone and to tick (one relaxed store).
#[derive(Clone)]
pub struct Progress {
    last_ms: Arc<AtomicU64>,
}

impl Progress {
    pub fn tick(&self) {
        self.last_ms.store(mono_ms(), Ordering::Relaxed);
    }
}

struct Worker {
    last_ms: Arc<AtomicU64>,
    stale_after: Duration,
}

/// The registry of workers and problems. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    workers: Arc<RwLock<BTreeMap<String, Worker>>>,
    problems: Arc<RwLock<BTreeMap<String, String>>>,
    faults: Arc<RwLock<BTreeMap<String, String>>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a worker that must tick at least every `stale_after`.
    pub fn worker(&self, name: &str, stale_after: Duration) -> Progress {
        let last_ms = Arc::new(AtomicU64::new(mono_ms()));
        let w = Worker {
            last_ms: last_ms.clone(),
            stale_after,
        };
        self.workers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), w);
        Progress { last_ms }
    }

    /// Sets (Some) or clears (None) a standing problem under `key`.
    pub fn set_problem(&self, key: &str, problem: Option<String>) {
        let mut p = self.problems.write().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(msg) => {
                p.insert(key.to_string(), msg);
            }
            None => {
                p.remove(key);
            }
        }
    }

    /// Sets (Some) or clears (None) a fault under `key`: like a problem, and HA gives up the
    /// service while any fault stands.
    pub fn set_fault(&self, key: &str, fault: Option<String>) {
        let mut f = self.faults.write().unwrap_or_else(|e| e.into_inner());
        match fault {
            Some(msg) => {
                f.insert(key.to_string(), msg);
            }
            None => {
                f.remove(key);
            }
        }
    }

    /// Why this node cannot serve now (stuck workers, faults); empty means it can. HA's input.
    pub fn cannot_serve(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .workers_stuck()
            .into_iter()
            .map(|w| format!("{w} worker stuck"))
            .collect();
        out.extend(
            self.faults
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned(),
        );
        out
    }

    /// Every reason the node is not healthy now; empty means healthy.
    pub fn problems(&self) -> Vec<String> {
        let now = mono_ms();
        let mut out = Vec::new();
        for (name, w) in self
            .workers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let age = now.saturating_sub(w.last_ms.load(Ordering::Relaxed));
            if age > w.stale_after.as_millis() as u64 {
                out.push(format!(
                    "{name} worker made no progress for {:.1}s",
                    age as f64 / 1000.0
                ));
            }
        }
        for (k, v) in self
            .problems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push(format!("{k}: {v}"));
        }
        for (k, v) in self.faults.read().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push(format!("{k}: {v}"));
        }
        out
    }

    /// The serving workers that made no progress (not the problems or faults): the systemd
    /// watchdog uses this, as a restart cannot cure a missing carrier.
    pub fn workers_stuck(&self) -> Vec<String> {
        let now = mono_ms();
        self.workers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, w)| {
                now.saturating_sub(w.last_ms.load(Ordering::Relaxed))
                    > w.stale_after.as_millis() as u64
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_stops_ticking_goes_stale() {
        let h = Health::new();
        let p = h.worker("dhcp", Duration::from_millis(30));
        p.tick();
        assert!(h.problems().is_empty());
        std::thread::sleep(Duration::from_millis(60));
        let probs = h.problems();
        assert_eq!(probs.len(), 1);
        assert!(
            probs[0].starts_with("dhcp worker made no progress"),
            "{probs:?}"
        );
        assert_eq!(h.workers_stuck(), vec!["dhcp".to_string()]);
        p.tick();
        assert!(h.problems().is_empty());
    }

    #[test]
    fn problems_are_reported_until_cleared() {
        let h = Health::new();
        h.set_problem("vip dns-vip", Some("interface \"eth9\" not found".into()));
        assert_eq!(
            h.problems(),
            vec!["vip dns-vip: interface \"eth9\" not found".to_string()]
        );
        assert!(h.workers_stuck().is_empty());
        // A problem degrades health but does not stop the node serving.
        assert!(h.cannot_serve().is_empty());
        h.set_problem("vip dns-vip", None);
        assert!(h.problems().is_empty());
    }

    #[test]
    fn faults_and_stuck_workers_are_why_a_node_cannot_serve() {
        let h = Health::new();
        let _p = h.worker("dns", Duration::from_millis(20));
        h.set_fault("vip dns-vip", Some("eth0 has no carrier".into()));
        assert_eq!(h.cannot_serve(), vec!["eth0 has no carrier".to_string()]);
        assert_eq!(
            h.problems(),
            vec!["vip dns-vip: eth0 has no carrier".to_string()]
        );
        assert!(h.workers_stuck().is_empty(), "the watchdog ignores faults");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            h.cannot_serve(),
            vec![
                "dns worker stuck".to_string(),
                "eth0 has no carrier".to_string()
            ]
        );
        h.set_fault("vip dns-vip", None);
        assert_eq!(h.cannot_serve(), vec!["dns worker stuck".to_string()]);
    }
}

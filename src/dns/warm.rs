//! Warm standby: the standby's cache follows what the active node's clients ask.
//!
//! The active node offers the question of every answer it stores for its clients
//! ([`Outgoing::offer`]); the HA link's writer takes them in batches of at most
//! [`BATCH_MAX`], at most one batch per [`BATCH_INTERVAL`], and only when it has no lease
//! frame to send, and ships each as one compact frame ([`encode`]); the standby resolves each
//! question itself, through its own forwarders, into its cache ([`WarmLink::receive`]). The
//! answers are stored `warm`: hidden from clients until this node serves (see `cache`), so
//! nothing the standby resolved answers a client before it is ACTIVE. After a failover the
//! names the clients asked before are cache hits.
//!
//! Bounded everywhere, and dropped first: the outgoing queue keeps at most [`QUEUE_MAX`]
//! questions (later ones are dropped and counted), the standby's intake at most
//! [`INTAKE_MAX`] and resolves at most [`CONCURRENCY`] at once. A question the standby
//! stored less than half its TTL ago costs nothing; an older copy is refreshed, so the active
//! node's prefetches (last tenth of the TTL) keep the standby's copies from expiring too.
//! Wire form of a batch: per question its length (u16, big endian) and the cache key
//! (qtype, qclass, DO, lowercase wire name).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::metrics::DnsMetrics;
use super::server::{Origin, Resolver};
use super::wire::{KEY_MAX, MAX_NAME};

/// Questions waiting for the link; more are dropped (the link is down or slow).
pub const QUEUE_MAX: usize = 16_384;
/// Questions per frame.
pub const BATCH_MAX: usize = 256;
/// At most one frame per interval: 256 per 50 ms is 5,120 questions/s at most, a few
/// hundred kB/s on the link at the very worst.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// Questions the standby has received and not yet started resolving.
pub const INTAKE_MAX: usize = 8_192;
/// Warm resolutions in flight on the standby.
pub const CONCURRENCY: usize = 32;

/// The active side's queue of questions for the peer; part of the resolver, idle until a
/// [`WarmLink`] exists (standalone nobody takes from it).
#[derive(Default)]
pub struct Outgoing {
    on: AtomicBool,
    queue: Mutex<VecDeque<Box<[u8]>>>,
    ready: Notify,
    /// The earliest time the next batch may leave.
    next_batch: Mutex<Option<Instant>>,
}

impl Outgoing {
    /// `key` was stored in the cache for a client: queue it for the peer.
    pub fn offer(&self, key: &[u8], metrics: &DnsMetrics) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= QUEUE_MAX {
            drop(q);
            metrics.warm("dropped", 1);
            return;
        }
        q.push_back(key.into());
        drop(q);
        self.ready.notify_one();
    }
}

/// The warm-standby ends of one DNS server, for the HA link. Cheap to clone.
#[derive(Clone)]
pub struct WarmLink {
    intake: mpsc::Sender<Box<[u8]>>,
    resolver: Arc<Resolver>,
}

impl WarmLink {
    /// Turns the outgoing queue on and starts the standby's resolving task (stops with
    /// `shutdown`).
    pub(super) fn start(resolver: Arc<Resolver>, shutdown: CancellationToken) -> WarmLink {
        let (tx, rx) = mpsc::channel(INTAKE_MAX);
        tokio::spawn(resolve_intake(resolver.clone(), rx, shutdown));
        resolver.warm_out.on.store(true, Ordering::Relaxed);
        WarmLink {
            intake: tx,
            resolver,
        }
    }

    /// The next batch for the peer, encoded: waits until questions are queued and the rate
    /// bound allows one. Cancel-safe (the link writer selects on it): nothing is taken from
    /// the queue before it returns.
    pub async fn next_batch(&self) -> Vec<u8> {
        let out = &self.resolver.warm_out;
        loop {
            let at = *out.next_batch.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = at {
                tokio::time::sleep_until(at.into()).await;
            }
            if let Some(batch) = self.take_batch() {
                *out.next_batch.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + BATCH_INTERVAL);
                return batch;
            }
            out.ready.notified().await;
        }
    }

    fn take_batch(&self) -> Option<Vec<u8>> {
        let mut q = self
            .resolver
            .warm_out
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            return None;
        }
        let n = q.len().min(BATCH_MAX);
        let keys: Vec<Box<[u8]>> = q.drain(..n).collect();
        drop(q);
        self.resolver.metrics.warm("sent", n as u64);
        Some(encode(&keys))
    }

    /// The standby side: questions the active node's cache learned. Malformed entries are
    /// counted and end the batch; questions this node stored recently are skipped; the rest
    /// are resolved in the background (dropped when the intake is full).
    pub fn receive(&self, batch: &[u8]) {
        let now = Instant::now();
        let mut received = 0;
        for key in decode(batch) {
            let Some(key) = key else {
                self.resolver.metrics.malformed("warm", "bad_question");
                tracing::debug!(
                    len = batch.len(),
                    "dropped the rest of a malformed warm-standby batch"
                );
                break;
            };
            received += 1;
            if self.resolver.cache.recently_stored(key, now) {
                self.resolver.metrics.warm("fresh", 1);
                continue;
            }
            if self.intake.try_send(key.into()).is_err() {
                self.resolver.metrics.warm("dropped", 1);
            }
        }
        self.resolver.metrics.warm("received", received);
    }
}

/// Resolves received questions, [`CONCURRENCY`] at a time.
async fn resolve_intake(
    res: Arc<Resolver>,
    mut rx: mpsc::Receiver<Box<[u8]>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    loop {
        let key = tokio::select! {
            _ = shutdown.cancelled() => return,
            k = rx.recv() => match k { Some(k) => k, None => return },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Checked again: a client of this node, or an earlier batch, may have filled it.
        if res.cache.recently_stored(&key, Instant::now()) || !res.claim(&key) {
            continue;
        }
        res.metrics.warm("resolved", 1);
        let res = res.clone();
        tokio::spawn(async move {
            res.forward(key, Origin::Warm).await;
            drop(permit);
        });
    }
}

/// Packs cache keys for the wire.
pub fn encode(keys: &[Box<[u8]>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| k.len() + 2).sum());
    for k in keys {
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k);
    }
    out
}

/// The cache keys of a batch; `None` for the first malformed one (and nothing after it).
pub fn decode(batch: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut pos = 0;
    let mut broken = false;
    std::iter::from_fn(move || {
        if broken || pos >= batch.len() {
            return None;
        }
        let key = batch
            .get(pos..pos + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
            .and_then(|len| batch.get(pos + 2..pos + 2 + len))
            .filter(|k| valid_key(k));
        match key {
            Some(k) => pos += 2 + k.len(),
            None => broken = true,
        }
        Some(key)
    })
}

/// Is `key` a cache key a query could have made: type, class, DO 0/1, a lowercase wire name
/// without pointers that ends exactly at the end of the key?
fn valid_key(key: &[u8]) -> bool {
    if key.len() < 6 || key.len() > KEY_MAX || key[4] > 1 {
        return false;
    }
    let name = &key[5..];
    if name.len() > MAX_NAME {
        return false;
    }
    let mut pos = 0;
    loop {
        let Some(&l) = name.get(pos) else {
            return false;
        };
        if l == 0 {
            return pos + 1 == name.len();
        }
        if l > 63 {
            return false;
        }
        let Some(label) = name.get(pos + 1..pos + 1 + l as usize) else {
            return false;
        };
        if label.iter().any(|b| b.is_ascii_uppercase()) {
            return false;
        }
        pos += 1 + l as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, qtype: u16) -> Box<[u8]> {
        let mut k = qtype.to_be_bytes().to_vec();
        k.extend_from_slice(&[0, 1, 0]);
        k.extend(super::super::wire::name_to_wire(name).unwrap());
        k.into()
    }

    #[test]
    fn a_batch_round_trips_and_stops_at_the_first_malformed_question() {
        let keys = vec![
            key("www.example.com", 1),
            key("example.org", 28),
            key(".", 2),
        ];
        let wire = encode(&keys);
        let back: Vec<_> = decode(&wire).collect();
        assert_eq!(back.len(), 3);
        for (k, b) in keys.iter().zip(&back) {
            assert_eq!(Some(&k[..]), *b);
        }
        let mut bad = wire.clone();
        let first = keys[0].len() + 2;
        // The second name's first label claims to be longer than the name.
        bad[first + 2 + 5] = 60;
        let back: Vec<_> = decode(&bad).collect();
        assert_eq!(back.len(), 2);
        assert!(back[0].is_some() && back[1].is_none());
        assert_eq!(decode(&[0, 200, 1, 2]).collect::<Vec<_>>(), vec![None]);
        assert_eq!(decode(&[]).count(), 0);
    }

    #[test]
    fn keys_a_query_could_not_make_are_refused() {
        assert!(valid_key(&key("a.example", 1)));
        let mut upper = key("a.example", 1).to_vec();
        upper[6] = b'A';
        assert!(!valid_key(&upper));
        let mut do_flag = key("a.example", 1).to_vec();
        do_flag[4] = 7;
        assert!(!valid_key(&do_flag));
        let mut trailing = key("a.example", 1).to_vec();
        trailing.push(0);
        assert!(!valid_key(&trailing));
        assert!(!valid_key(&[0, 1, 0, 1, 0, 0xc0, 12]));
    }
}

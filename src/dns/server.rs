//! The query pipeline (local zone → cache → forwarders) and the UDP and TCP serving loops.
//!
//! Invariants: a local or cached answer is produced inline by the serving loop (no task, no
//! allocation beyond the reply buffer it reuses); only a cache miss, a prefetch or a stale
//! entry's next refresh spawns work, and at most one upstream query runs per (name, type,
//! class, DO): identical queries arriving meanwhile wait on the same forward ("in flight"),
//! whose count is bounded. When every forwarder fails for an expired entry still within
//! `stale_max`, its waiters get it stale (TTL [`STALE_TTL`]) instead of SERVFAIL, and while
//! every forwarder of a name is failing (each failed its last query less than 5 s ago), an
//! expired entry is answered stale at once and refreshed in the background; when the
//! upstream is only slow, they get it once the client response timer
//! (`stale_answer_client_timeout`, RFC 8767 §5) runs out, while the forward goes on and
//! refreshes the cache when it answers. The UDP loop ticks its health progress handle on
//! every batch and at least every second when idle.
//!
//! The forwarders, the serve-stale limits and the client response timer can be replaced
//! while queries run (SIGHUP): a forward already under way finishes with the forwarders it
//! started with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::cache::{Cache, Lookup};
use super::metrics::{DnsMetrics, Outcome};
use super::udp::UdpEndpoint;
use super::upstream::Forwarders;
use super::wire::{
    parse_query, render_error, split_key, Answer, ParsedQuery, QueryMeta, RCODE_NOTIMP,
    RCODE_SERVFAIL,
};
use super::zone::Zone;
use crate::health::Progress;
use crate::pktinfo::{Peer, RecvBatch, SendBatch, BATCH};

/// Distinct questions waiting for upstreams at once; more are answered SERVFAIL at once.
const MAX_INFLIGHT: usize = 4096;
/// Clients waiting on one in-flight question.
const MAX_WAITERS: usize = 256;
/// Local answers remembered per serving loop before the memo starts over.
const MEMO_MAX: usize = 16_384;
/// TTL of an answer served stale (RFC 8767 §4 recommends 30 s).
pub const STALE_TTL: u32 = 30;

/// Why a forward runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client's miss or expired entry: clients wait for it.
    Client,
    /// In the background: a prefetch, or the next try for a name being served stale.
    Refresh,
    /// Asked by the active peer for the warm standby: stored hidden until this node serves.
    Warm,
}

/// Where a forwarded answer goes.
pub enum ReplyTo {
    Udp(Arc<UdpEndpoint>, Peer),
    /// The TCP connection task renders and writes it.
    Chan(oneshot::Sender<Vec<u8>>),
}

struct Waiter {
    meta: QueryMeta,
    to: ReplyTo,
}

/// Local answers already encoded, per serving loop, valid for one zone generation.
#[derive(Default)]
pub struct Memo {
    generation: u64,
    map: HashMap<Box<[u8]>, Arc<Answer>>,
}

pub struct Resolver {
    zone: RwLock<Zone>,
    /// Bumped after every zone change; memos of older generations are dropped.
    zone_generation: AtomicU64,
    pub cache: Cache,
    /// Swapped whole on a reload; a forward holds its own `Arc` while it runs.
    forwarders: RwLock<Arc<Forwarders>>,
    /// RFC 8767's client response timer in milliseconds (0: off): how long clients wait on
    /// a forward for an expired name before they get the stale answer.
    stale_client_timeout_ms: AtomicU64,
    inflight: Mutex<HashMap<Box<[u8]>, Vec<Waiter>>>,
    pub metrics: DnsMetrics,
    runtime: tokio::runtime::Handle,
    /// This node serves clients (standalone, or HA ACTIVE): warm answers count as hits.
    serving: AtomicBool,
    /// Questions stored for clients, on their way to the standby (`warm`).
    pub warm_out: super::warm::Outgoing,
}

impl Resolver {
    /// `runtime` runs the forward tasks.
    pub fn new(
        zone: Zone,
        cache: Cache,
        forwarders: Forwarders,
        metrics: DnsMetrics,
        runtime: tokio::runtime::Handle,
    ) -> Resolver {
        Resolver {
            runtime,
            zone: RwLock::new(zone),
            zone_generation: AtomicU64::new(1),
            cache,
            forwarders: RwLock::new(Arc::new(forwarders)),
            stale_client_timeout_ms: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            metrics,
            serving: AtomicBool::new(true),
            warm_out: Default::default(),
        }
    }

    /// Whether this node serves clients (HA ACTIVE or standalone).
    pub fn set_serving(&self, on: bool) {
        self.serving.store(on, Ordering::Relaxed);
    }

    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// The forwarders now in use.
    pub fn forwarders(&self) -> Arc<Forwarders> {
        self.forwarders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the forwarders (a reload); forwards under way keep theirs.
    pub fn set_forwarders(&self, forwarders: Forwarders) {
        *self.forwarders.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(forwarders);
    }

    /// Sets RFC 8767's client response timer; zero turns it off (clients wait for the
    /// forwarders, and get the stale answer only when every one failed).
    pub fn set_stale_client_timeout(&self, t: Duration) {
        let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        self.stale_client_timeout_ms.store(ms, Ordering::Relaxed);
    }

    fn stale_client_timeout(&self) -> Option<Duration> {
        match self.stale_client_timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Changes the zone; serving loops see the change from their next query on.
    pub fn with_zone<T>(&self, f: impl FnOnce(&mut Zone) -> T) -> T {
        let r = {
            let mut z = self.zone.write().unwrap_or_else(|e| e.into_inner());
            f(&mut z)
        };
        self.zone_generation.fetch_add(1, Ordering::Release);
        r
    }

    pub fn zone_counts(&self) -> (usize, usize) {
        let z = self.zone.read().unwrap_or_else(|e| e.into_inner());
        (z.static_count(), z.lease_count())
    }

    pub fn inflight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Answers `q`. True: the reply is in `out`. False: it will be sent to `reply_to()` when
    /// the upstream answers.
    pub fn answer(
        self: &Arc<Self>,
        q: &ParsedQuery,
        memo: &mut Memo,
        now: Instant,
        limit: usize,
        out: &mut Vec<u8>,
        reply_to: impl FnOnce() -> ReplyTo,
    ) -> bool {
        let qtype = q.qtype();
        // Zone transfers (IXFR 251, AXFR 252) and opcodes other than QUERY are not served.
        if q.meta.opcode() != 0 || qtype == 251 || qtype == 252 {
            render_error(&q.meta, RCODE_NOTIMP, out);
            self.metrics.query(qtype, Outcome::Notimp);
            return true;
        }
        let generation = self.zone_generation.load(Ordering::Acquire);
        if memo.generation != generation {
            memo.map.clear();
            memo.generation = generation;
        }
        if let Some(a) = memo.map.get(q.key()) {
            a.render(&q.meta, 0, limit, out);
            self.metrics.query(qtype, Outcome::Local);
            return true;
        }
        let local = {
            let z = self.zone.read().unwrap_or_else(|e| e.into_inner());
            z.lookup(q.name(), qtype, q.qclass())
        };
        if let Some(msg) = local {
            match msg.to_vec().ok().and_then(|b| Answer::from_wire(b).ok()) {
                Some(a) => {
                    a.render(&q.meta, 0, limit, out);
                    if memo.map.len() >= MEMO_MAX {
                        memo.map.clear();
                    }
                    memo.map.insert(q.key().into(), Arc::new(a));
                }
                None => render_error(&q.meta, RCODE_SERVFAIL, out),
            }
            self.metrics.query(qtype, Outcome::Local);
            return true;
        }
        match self.cache.lookup(q.key(), now, self.serving()) {
            Lookup::Fresh {
                answer,
                age,
                prefetch,
            } => {
                self.metrics.cache_hit();
                answer.render(&q.meta, age, limit, out);
                self.metrics.query(qtype, Outcome::Cached);
                if prefetch && self.refresh(q.key(), Origin::Refresh) {
                    self.metrics.prefetch();
                }
                return true;
            }
            Lookup::Stale { answer, refresh } => {
                answer.render_stale(&q.meta, STALE_TTL, limit, out);
                self.metrics.query(qtype, Outcome::Stale);
                if refresh {
                    self.refresh(q.key(), Origin::Refresh);
                }
                return true;
            }
            Lookup::Expired => {
                // Every forwarder of the name failed moments ago (an outage): the stale
                // answer now, and the refresh in the background, instead of one more
                // client waiting out the forwarders' timeouts for each expired name.
                if self.forwarders().for_name(q.name()).all_failing() {
                    if let Some(a) = self.cache.failed(q.key(), now, self.serving()) {
                        a.render_stale(&q.meta, STALE_TTL, limit, out);
                        self.metrics.query(qtype, Outcome::Stale);
                        self.refresh(q.key(), Origin::Refresh);
                        return true;
                    }
                }
            }
            Lookup::Miss => {}
        }
        self.metrics.cache_miss();
        if self.forwarders().for_name(q.name()).is_empty() {
            render_error(&q.meta, RCODE_SERVFAIL, out);
            self.metrics.query(qtype, Outcome::Servfail);
            return true;
        }
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = inflight.get_mut(q.key()) {
            if waiting.len() < MAX_WAITERS {
                waiting.push(Waiter {
                    meta: q.meta.clone(),
                    to: reply_to(),
                });
                return false;
            }
        } else if inflight.len() < MAX_INFLIGHT {
            inflight.insert(
                q.key().into(),
                vec![Waiter {
                    meta: q.meta.clone(),
                    to: reply_to(),
                }],
            );
            drop(inflight);
            let key: Box<[u8]> = q.key().into();
            // The UDP loop runs on its own thread, outside the runtime: spawn through the handle.
            self.runtime
                .spawn(self.clone().forward(key, Origin::Client));
            return false;
        }
        drop(inflight);
        render_error(&q.meta, RCODE_SERVFAIL, out);
        self.metrics.query(qtype, Outcome::Overload);
        true
    }

    /// Starts a forward for `key` nobody waits for, unless one is in flight already (or too
    /// many are). True if it started.
    pub fn refresh(self: &Arc<Self>, key: &[u8], origin: Origin) -> bool {
        if !self.claim(key) {
            return false;
        }
        self.runtime.spawn(self.clone().forward(key.into(), origin));
        true
    }

    /// Marks `key` in flight with nobody waiting, unless it is already (or too many are);
    /// the caller then runs [`Resolver::forward`]. True if claimed.
    pub fn claim(&self, key: &[u8]) -> bool {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.contains_key(key) || inflight.len() >= MAX_INFLIGHT {
            return false;
        }
        inflight.insert(key.into(), Vec::new());
        true
    }

    /// Asks the upstreams for `key` (claimed in flight) and answers everyone waiting on it.
    pub async fn forward(self: Arc<Self>, key: Box<[u8]>, origin: Origin) {
        let (qtype, qclass, name) = split_key(&key);
        // The key's DO byte: the client's DNSSEC OK bit goes upstream.
        let dnssec_ok = key[4] != 0;
        let mut question = Vec::with_capacity(name.len() + 4);
        question.extend_from_slice(name);
        question.extend_from_slice(&qtype.to_be_bytes());
        question.extend_from_slice(&qclass.to_be_bytes());
        let forwarders = self.forwarders();
        let resolve = forwarders
            .for_name(name)
            .resolve(&question, dnssec_ok, &self.metrics);
        let result = match self.stale_client_timeout() {
            // Only clients wait; a background refresh has nobody to answer early.
            Some(t) if origin == Origin::Client => {
                tokio::pin!(resolve);
                tokio::select! {
                    r = &mut resolve => r,
                    _ = tokio::time::sleep(t) => {
                        self.answer_stale_early(&key, qtype);
                        resolve.await
                    }
                }
            }
            _ => resolve.await,
        };
        let answer = match result {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                tracing::debug!(name = %super::wire::wire_to_text(name), qtype, "forward failed: {e}");
                None
            }
        };
        let now = Instant::now();
        let stale = match &answer {
            Some(a) => {
                if let Some(ttl) = a.cache_ttl() {
                    let warm = origin == Origin::Warm;
                    self.cache.insert(&key, a.clone(), ttl, now, warm);
                    // What this node's clients asked goes to the standby (not what it
                    // resolved for the peer, nor anything while it does not serve).
                    if !warm && self.serving() {
                        self.warm_out.offer(&key, &self.metrics);
                    }
                }
                None
            }
            None => self.cache.failed(&key, now, self.serving()),
        };
        // Removed only after the cache insert, so a query arriving in between finds one of
        // the two and never starts a second forward for a cacheable answer.
        let waiters = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .unwrap_or_default();
        self.reply(waiters, qtype, |meta, limit, buf| match (&answer, &stale) {
            (Some(a), _) => {
                a.render(meta, 0, limit, buf);
                Outcome::Forwarded
            }
            (None, Some(a)) => {
                a.render_stale(meta, STALE_TTL, limit, buf);
                Outcome::Stale
            }
            (None, None) => {
                render_error(meta, RCODE_SERVFAIL, buf);
                Outcome::Servfail
            }
        });
    }

    /// The client response timer ran out while the upstreams are still being asked: if
    /// `key`'s expired answer may be served stale, everyone waiting gets it now, and queries
    /// arriving later get it at once (the cache marks it as after a failure); the forward
    /// goes on and stores whatever it brings. Otherwise (never cached, past `stale_max`,
    /// serve-stale off) the clients keep waiting.
    fn answer_stale_early(&self, key: &[u8], qtype: u16) {
        let Some(stale) = self.cache.failed(key, Instant::now(), self.serving()) else {
            return;
        };
        let waiters = match self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
        {
            // Left in flight, empty: no second forward starts for the key meanwhile.
            Some(w) => std::mem::take(w),
            None => return,
        };
        tracing::debug!(
            name = %super::wire::wire_to_text(split_key(key).2),
            qtype,
            clients = waiters.len(),
            "upstream slow: answered stale, still waiting for it"
        );
        self.reply(waiters, qtype, |meta, limit, buf| {
            stale.render_stale(meta, STALE_TTL, limit, buf);
            Outcome::Stale
        });
    }

    /// Sends each waiter what `render` writes for it, counting the outcome it returns.
    fn reply(
        &self,
        waiters: Vec<Waiter>,
        qtype: u16,
        render: impl Fn(&QueryMeta, usize, &mut Vec<u8>) -> Outcome,
    ) {
        let mut buf = Vec::new();
        for w in waiters {
            let limit = match &w.to {
                ReplyTo::Udp(..) => w.meta.udp_limit(),
                ReplyTo::Chan(_) => u16::MAX as usize,
            };
            let outcome = render(&w.meta, limit, &mut buf);
            self.metrics.query(qtype, outcome);
            match w.to {
                ReplyTo::Udp(ep, peer) => {
                    if ep.send_to(&buf, &peer).is_err() {
                        self.metrics.send_error();
                    }
                }
                ReplyTo::Chan(tx) => {
                    let _ = tx.send(std::mem::take(&mut buf));
                }
            }
        }
    }
}

/// The UDP serving loop, on its own thread: `recvmmsg` waits for datagrams and takes every
/// one queued, answers are built inline, one `sendmmsg` sends them. Returns on shutdown
/// (seen within the socket's receive timeout).
///
/// Wake-up coalescing: on this kind of machine a wake-up (context switch in and out, waking
/// the client) costs 15-25 µs, a cached answer about one. So while queries keep arriving
/// (the last wake-up was less than two `coalesce` periods ago, or it found several queued),
/// the loop sleeps `coalesce` after each batch and then takes whatever queued meanwhile in
/// one go, instead of waking for every datagram. That trades at most `coalesce` of added
/// latency (250 µs by default, well under a network round trip) for several times fewer
/// wake-ups at moderate rates. When a sleep finds nothing queued, the loop goes back to
/// blocking, so an idle or lightly used server answers at once; above `NO_COALESCE_QPS`
/// batches form without sleeping and it stops sleeping too. Zero turns it off.
pub fn serve_udp(
    res: Arc<Resolver>,
    ep: Arc<UdpEndpoint>,
    progress: Progress,
    coalesce: Duration,
    shutdown: CancellationToken,
) {
    let mut rb = RecvBatch::new();
    let mut sb = SendBatch::new();
    let mut memo = Memo::default();
    let fd = ep.raw_fd();
    let v6 = ep.is_v6();
    let mut next = Next::Block;
    let mut last_wake = Instant::now();
    // Query rate over the last window: above NO_COALESCE_QPS queries already arrive while a
    // batch is being answered, and sleeping would only lengthen a closed-loop client's round
    // trips (fewer queries in flight per second), so the loop stops sleeping.
    let mut window_start = Instant::now();
    let mut window_queries = 0u64;
    let mut heavy = false;
    while !shutdown.is_cancelled() {
        progress.tick();
        let received = match next {
            Next::Block => rb.recv(fd),
            Next::Sleep => {
                std::thread::sleep(coalesce);
                rb.try_recv(fd)
            }
            Next::Drain => rb.try_recv(fd),
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                next = Next::Block;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Not expected on an unconnected UDP socket; never spin on it.
                tracing::debug!("DNS UDP receive error: {e}");
                next = Next::Block;
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let now = Instant::now();
        for i in 0..n {
            let (data, peer, truncated) = rb.get(i);
            let Some(peer) = peer else { continue };
            if truncated {
                res.metrics.malformed("udp", "oversized");
                tracing::debug!(client = %peer.addr, "dropped an oversized DNS datagram");
                continue;
            }
            let q = match parse_query(data) {
                Ok(q) => q,
                Err(e) => {
                    res.metrics.malformed("udp", e.reason());
                    tracing::debug!(client = %peer.addr, len = data.len(), "dropped a malformed DNS query: {e}");
                    continue;
                }
            };
            let limit = q.meta.udp_limit();
            let out = sb.next_buf();
            if res.answer(&q, &mut memo, now, limit, out, || {
                ReplyTo::Udp(ep.clone(), peer)
            }) {
                sb.push(peer);
            }
        }
        for _ in 0..sb.flush(fd, v6) {
            res.metrics.send_error();
        }
        let busy = n > 1 || now.saturating_duration_since(last_wake) < coalesce * 2;
        last_wake = now;
        window_queries += n as u64;
        let window = now.saturating_duration_since(window_start);
        if window >= RATE_WINDOW {
            heavy = window_queries as f64 / window.as_secs_f64() > NO_COALESCE_QPS;
            window_queries = 0;
            window_start = now;
        }
        next = if n >= BATCH / 2 {
            // Load enough to fill batches without waiting: take what queued meanwhile.
            Next::Drain
        } else if busy && !heavy && !coalesce.is_zero() {
            Next::Sleep
        } else {
            Next::Block
        };
    }
}

/// Rate above which the UDP loop stops coalescing (see `serve_udp`).
const NO_COALESCE_QPS: f64 = 40_000.0;
/// How often the UDP loop re-estimates the query rate.
const RATE_WINDOW: Duration = Duration::from_millis(5);

/// What the UDP loop does before its next receive.
#[derive(Clone, Copy, PartialEq)]
enum Next {
    /// Wait in the kernel for the next datagram.
    Block,
    /// Sleep `coalesce`, then take what queued.
    Sleep,
    /// Take what is queued now.
    Drain,
}

/// TCP limits.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    /// A connection that sends nothing for this long is closed (RFC 7766 suggests seconds).
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            idle_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// Accepts TCP clients, one task each, at most `max_connections` at once.
pub async fn serve_tcp(
    res: Arc<Resolver>,
    listener: tokio::net::TcpListener,
    opts: TcpOptions,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(client = %peer, "DNS TCP connection refused: too many open");
                    continue;
                };
                let res = res.clone();
                let sd = shutdown.clone();
                tokio::spawn(async move {
                    tcp_connection(res, stream, opts.idle_timeout, sd).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::debug!("DNS TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn tcp_connection(
    res: Arc<Resolver>,
    mut s: tokio::net::TcpStream,
    idle: Duration,
    shutdown: CancellationToken,
) {
    let _ = s.set_nodelay(true);
    let mut memo = Memo::default();
    let mut out = Vec::new();
    let mut framed = Vec::new();
    loop {
        let len = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(idle, s.read_u16()) => match r {
                Err(_) => {
                    res.metrics.tcp_idle_closed();
                    return;
                }
                Ok(Err(_)) => return,
                Ok(Ok(l)) => l as usize,
            },
        };
        if len == 0 {
            res.metrics.malformed("tcp", "zero_length_frame");
            tracing::debug!("closed a DNS TCP connection after a zero-length frame");
            return;
        }
        let mut buf = vec![0u8; len];
        match tokio::time::timeout(idle, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                res.metrics.tcp_idle_closed();
                return;
            }
        }
        let q = match parse_query(&buf) {
            Ok(q) => q,
            Err(e) => {
                res.metrics.malformed("tcp", e.reason());
                tracing::debug!("closed a DNS TCP connection after a malformed query: {e}");
                return;
            }
        };
        let (tx, rx) = oneshot::channel();
        let filled = res.answer(
            &q,
            &mut memo,
            Instant::now(),
            u16::MAX as usize,
            &mut out,
            move || ReplyTo::Chan(tx),
        );
        if !filled {
            match rx.await {
                Ok(bytes) => out = bytes,
                Err(_) => return,
            }
        }
        framed.clear();
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

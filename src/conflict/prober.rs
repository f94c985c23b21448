//! The prober: one task that sends ARP probes and ICMP echoes and hands each probe's
//! verdict to whatever waits for it.
//!
//! Nothing waits in here but the task itself: a caller leaves a continuation
//! ([`OnVerdict`]) and the task calls it when an answer arrives or the timeout passes, so a
//! DISCOVER under probe costs one boxed closure here, not a task and a channel of its own.
//! Every probe has the same timeout, so the deadlines sit in arrival order in one queue and
//! the task sleeps on one timer until the first: a thousand probes in flight cost a map
//! entry each and no timer of their own.
//!
//! Invariants:
//! - One probe per address in flight: a retransmitted DISCOVER joins the running probe.
//! - A probe's deadline counts from when its request arrived (the caller says when), so
//!   time spent queued before this task runs does not delay the OFFER.
//! - An address found free is not probed again within `probe_cache_ttl`; an ARP reply to our
//!   probe (target: our MAC, 0.0.0.0) or an echo reply from it within that time is a late
//!   conflict, reported as a [`Sighting`] for next time.
//! - Any other ARP claiming an address (a gratuitous announcement, a reply to someone else's
//!   probe) is reported as seen in passing (at most once a minute per address and MAC) for
//!   passive detection; the DHCP server decides whether it conflicts.
//! - Malformed frames and datagrams are counted, logged at debug and dropped.
//! - A probe that cannot be sent counts as free: conflict detection never stops DHCP.
//! - Continuations run on this task: they must not block.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::task::Poll;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use rustc_hash::FxHashMap;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::icmp::{self, Icmp};
use super::{ConflictMetrics, ConflictSockets};
use crate::vip::arp::{self, ArpSeen, ETH_P_ARP};
use crate::vip::packet::{recv_frame, send_frames};

/// `PACKET_OUTGOING`: a frame this host sent, looped back to the packet socket.
const PACKET_OUTGOING: u8 = 4;
/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// How often one address/MAC pair is reported by passive detection.
const PASSIVE_EVERY: Duration = Duration::from_secs(60);
/// Sightings queued towards the DHCP server; more are dropped (and counted).
const SIGHTINGS_QUEUE: usize = 1024;
/// Probe requests queued towards the task.
const COMMANDS_QUEUE: usize = 8192;
/// The task's timer fires only on a grid of this step: the probes that end within one step
/// end together, and after a turn that started probes the next requests are taken in at the
/// next step instead of each waking the task. Under load one turn per step then starts the
/// step's probes and sends its OFFERs. Each timer wake-up of an idle runtime thread costs far
/// more than the work it does (on the benchmark's VM, waking every 1 ms instead of every 4 ms
/// cost about 20 us per exchange at 4,000 DISCOVERs/s), so the step trades a little
/// precision for it: a probe leaves up to a step (plus the runtime's 1 ms timer resolution)
/// after its request arrived, and its OFFER up to as much after its deadline, within the
/// 5 ms the OFFER may take beyond `probe_timeout`. Deadlines still count from the arrival.
/// An idle task is woken by the first request at once.
const STEP: Duration = Duration::from_millis(2);
/// Requests taken in one turn.
const BATCH_MAX: usize = 256;
/// ARP operation code of a reply.
const ARP_REPLY: u16 = 2;

/// How to probe an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An ARP probe out of this interface (the subnet is attached to it).
    Arp { ifindex: u32 },
    /// An ICMP echo (a relayed subnet: routed, no shared link).
    Icmp,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No answer within the timeout (or probed free a moment ago).
    Free,
    /// Something answered: its MAC for ARP, none for ICMP (the reply came through a router).
    InUse { mac: Option<[u8; 6]> },
}

/// What to do with a probe's verdict. Called once, on the prober's task (or on the caller's
/// when the prober cannot take the probe): it must not block.
pub type OnVerdict = Box<dyn FnOnce(Verdict) + Send>;

/// An address heard from outside a running probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub ip: Ipv4Addr,
    pub mac: Option<[u8; 6]>,
    /// An answer to a probe that had already timed out (else an ARP seen in passing).
    pub late: bool,
}

/// Timing of the prober.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTimes {
    pub timeout: Duration,
    pub cache_ttl: Duration,
}

struct Probe {
    ip: Ipv4Addr,
    via: Via,
    /// When the request that asks arrived: the deadline counts from here.
    at: Instant,
    then: OnVerdict,
}

/// The handle the DHCP server probes through.
#[derive(Clone)]
pub struct Prober {
    tx: mpsc::Sender<Probe>,
    metrics: ConflictMetrics,
}

impl Prober {
    /// Starts the task; sightings come out of the returned receiver.
    pub fn start(
        sockets: ConflictSockets,
        times: ProbeTimes,
        metrics: ConflictMetrics,
        shutdown: CancellationToken,
    ) -> std::io::Result<(Prober, mpsc::Receiver<Sighting>)> {
        let (tx, rx) = mpsc::channel(COMMANDS_QUEUE);
        let (sight_tx, sight_rx) = mpsc::channel(SIGHTINGS_QUEUE);
        // Read interest only: a probe is sent without waiting (one that cannot be sent counts
        // as free), and with write interest every probe the peer consumed raised an EPOLLOUT
        // edge that woke a parked runtime thread for nothing (as for the DHCP sockets, see
        // `dhcp::server::DhcpSocket`).
        // SAFETY: both are valid non-blocking sockets that the AsyncFds own and that nothing
        // else closes or reads.
        let (arp, icmp) = unsafe {
            (
                AsyncFd::register_with_interest(sockets.arp, Interest::READABLE)?,
                AsyncFd::register_with_interest(sockets.icmp, Interest::READABLE)?,
            )
        };
        let handle_metrics = metrics.clone();
        let task = Task {
            arp,
            icmp,
            icmp_id: std::process::id() as u16,
            seq: 0,
            times,
            counts: Counts::new(&metrics),
            metrics,
            macs: HashMap::new(),
            addrs: FxHashMap::default(),
            running: 0,
            deadlines: VecDeque::new(),
            swept: Instant::now(),
            passive: FxHashMap::default(),
            sightings: sight_tx,
            outbox: Vec::new(),
        };
        tokio::spawn(task.run(rx, shutdown));
        Ok((
            Prober {
                tx,
                metrics: handle_metrics,
            },
            sight_rx,
        ))
    }

    /// Probes `ip` for a request that arrived at `at`; `then` gets the verdict when the probe
    /// ends. Gets `Free` at once when the task is gone (shutdown) or its queue is full: DHCP
    /// goes on without the check.
    pub fn probe_then(&self, ip: Ipv4Addr, via: Via, at: Instant, then: OnVerdict) {
        if let Err(e) = self.tx.try_send(Probe { ip, via, at, then }) {
            let p = match e {
                mpsc::error::TrySendError::Full(p) => {
                    self.metrics.probed("queue", "full");
                    p
                }
                mpsc::error::TrySendError::Closed(p) => p,
            };
            (p.then)(Verdict::Free);
        }
    }

    /// Probes `ip` from now on; the answer comes when the probe ends.
    pub fn probe(&self, ip: Ipv4Addr, via: Via) -> oneshot::Receiver<Verdict> {
        let (done, rx) = oneshot::channel();
        self.probe_then(
            ip,
            via,
            Instant::now(),
            Box::new(move |v| {
                let _ = done.send(v);
            }),
        );
        rx
    }
}

/// The hot counters, looked up once instead of through the label map on every probe.
struct Counts {
    arp_free: Counter,
    icmp_free: Counter,
    cached_free: Counter,
}

impl Counts {
    fn new(m: &ConflictMetrics) -> Counts {
        Counts {
            arp_free: m.probe_counter("arp", "free"),
            icmp_free: m.probe_counter("icmp", "free"),
            cached_free: m.probe_counter("cached", "free"),
        }
    }
}

struct InFlight {
    via: Via,
    /// This probe's number: its echo's sequence, and which entry of the deadline queue is
    /// its own (an answered probe's entry stays queued after the address is probed anew).
    seq: u16,
    /// Almost always the only one: a retransmitted DISCOVER is rare, so the rest are boxed
    /// and the map's entries stay small (a probe costs about one cache line of it).
    first: OnVerdict,
    /// A boxed slice, one pointer wide, rebuilt on each (rare) join.
    more: Option<Box<[OnVerdict]>>,
}

impl InFlight {
    fn answer(self, v: Verdict) {
        (self.first)(v);
        for w in self.more.into_iter().flat_map(|m| m.into_vec()) {
            w(v);
        }
    }
}

/// What the task knows of an address: one map for both, so a probe costs one lookup.
/// Keyed by the address as a `u32` with FxHash: the map holds `probe_cache_ttl` × the
/// DISCOVER rate entries (tens of thousands) and is hit twice per probe; SipHash on
/// `Ipv4Addr` was among the prober's largest costs in a profile at 4,000 DISCOVERs/s.
enum Known {
    Probing(InFlight),
    /// Probed free when its probe ended at this time.
    Free(Instant),
}

struct Task {
    arp: AsyncFd<OwnedFd>,
    icmp: AsyncFd<socket2::Socket>,
    icmp_id: u16,
    seq: u16,
    times: ProbeTimes,
    metrics: ConflictMetrics,
    counts: Counts,
    /// Interface MACs by index (the ARP probe's source), looked up when first needed.
    macs: HashMap<u32, Option<[u8; 6]>>,
    addrs: FxHashMap<u32, Known>,
    /// How many of `addrs` are `Probing`.
    running: usize,
    /// (deadline, address, probe number) in the order probes started: deadlines only grow
    /// (up to the spread between receive sockets' clocks of arrival, microseconds).
    deadlines: VecDeque<(Instant, Ipv4Addr, u16)>,
    /// When `addrs` was last swept of free verdicts older than `probe_cache_ttl`. One pass
    /// over the map each ttl costs less than a queue of them and a second lookup per probe;
    /// an entry then lives at most two ttls (`start` checks its age, so it is not trusted
    /// longer than one).
    swept: Instant,
    /// When each (address, MAC) was last reported by passive detection.
    passive: FxHashMap<(u32, [u8; 6]), Instant>,
    sightings: mpsc::Sender<Sighting>,
    /// This turn's ARP probes, sent together once the turn's requests are all in.
    outbox: Vec<ArpOut>,
}

/// An ARP probe on its way out.
struct ArpOut {
    ifindex: u32,
    frame: [u8; arp::GARP_LEN],
    ip: Ipv4Addr,
    /// Its probe's number, to find the probe again if the frame cannot be sent.
    seq: u16,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Probe>, shutdown: CancellationToken) {
        let mut frame = [0u8; 2048];
        let mut dgram = [0u8; 2048];
        let mut batch: Vec<Probe> = Vec::with_capacity(BATCH_MAX);
        // Made once, polled by hand: a select! builds these futures anew each turn, and each
        // registers and drops its waker with the runtime every time.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        // One timer, moved only when the next wake-up changes: a timer per loop turn would
        // be registered and dropped with the runtime's wheel on every batch.
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        // While requests keep coming, they are taken in at this tick rather than each
        // waking the task (see `STEP`).
        let mut collect_at: Option<Instant> = None;
        let grid = Instant::now();
        loop {
            let first = self.deadlines.front().map(|(d, _, _)| *d);
            let next = match (first, collect_at) {
                (Some(d), Some(c)) => Some(d.min(c)),
                (d, c) => d.or(c),
            }
            .map(|t| on_grid(t, grid, STEP));
            if next.is_some() && next != armed {
                if let Some(d) = next {
                    sleep.as_mut().reset(d.into());
                }
                armed = next;
            }
            let (mut arp_ready, mut icmp_ready) = (false, false);
            let go_on = std::future::poll_fn(|cx| {
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                let mut woke = false;
                if collect_at.is_none() {
                    match rx.poll_recv_many(cx, &mut batch, BATCH_MAX) {
                        Poll::Ready(0) => return Poll::Ready(false),
                        Poll::Ready(_) => woke = true,
                        Poll::Pending => {}
                    }
                }
                if let Poll::Ready(Ok(mut g)) = self.arp.poll_read_ready(cx) {
                    g.clear_ready();
                    arp_ready = true;
                    woke = true;
                }
                if let Poll::Ready(Ok(mut g)) = self.icmp.poll_read_ready(cx) {
                    g.clear_ready();
                    icmp_ready = true;
                    woke = true;
                }
                if armed.is_some() && sleep.as_mut().poll(cx).is_ready() {
                    armed = None;
                    woke = true;
                }
                if woke {
                    Poll::Ready(true)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if !go_on {
                return;
            }
            if arp_ready {
                self.read_arp(&mut frame);
            }
            if icmp_ready {
                self.read_icmp(&mut dgram);
            }
            // Whatever else queued meanwhile (all of it, at a tick).
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            collect_at = (!batch.is_empty()).then(|| now + Duration::from_millis(1));
            for p in batch.drain(..) {
                self.start(p, now);
            }
            self.send_probes();
            self.expire(now);
        }
    }

    fn start(&mut self, p: Probe, now: Instant) {
        match self.addrs.get_mut(&u32::from(p.ip)) {
            Some(Known::Probing(f)) => {
                let mut more = f.more.take().map(|m| m.into_vec()).unwrap_or_default();
                more.push(p.then);
                f.more = Some(more.into_boxed_slice());
                return;
            }
            Some(Known::Free(t)) if now.duration_since(*t) < self.times.cache_ttl => {
                self.counts.cached_free.inc();
                (p.then)(Verdict::Free);
                return;
            }
            _ => {}
        }
        self.seq = self.seq.wrapping_add(1);
        let via = match p.via {
            Via::Arp { ifindex } => match self.mac_of(ifindex) {
                Some(mac) => {
                    self.outbox.push(ArpOut {
                        ifindex,
                        frame: arp::probe_frame(mac, p.ip),
                        ip: p.ip,
                        seq: self.seq,
                    });
                    p.via
                }
                // No link-layer address (a tunnel, loopback): ask by ICMP instead.
                None => Via::Icmp,
            },
            Via::Icmp => p.via,
        };
        if via == Via::Icmp {
            let req = icmp::echo_request(self.icmp_id, self.seq);
            let to = SocketAddrV4::new(p.ip, 0);
            if let Err(e) = self.icmp.get_ref().send_to(&req, &to.into()) {
                self.unsent(p, "icmp", &e);
                return;
            }
        }
        // From the request's arrival, but never before the probe left plus a millisecond
        // (a request that queued longer than the timeout still gets a chance to be answered).
        let deadline = (p.at + self.times.timeout).max(now + Duration::from_millis(1));
        self.deadlines.push_back((deadline, p.ip, self.seq));
        self.addrs.insert(
            u32::from(p.ip),
            Known::Probing(InFlight {
                via,
                seq: self.seq,
                first: p.then,
                more: None,
            }),
        );
        self.running += 1;
    }

    /// Sends this turn's ARP probes in one call. A probe whose frame cannot be sent ends
    /// at once as free: conflict detection never stops DHCP.
    fn send_probes(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let frames: Vec<(u32, &[u8])> = self
            .outbox
            .iter()
            .map(|o| (o.ifindex, &o.frame[..]))
            .collect();
        let (sent, err) = send_frames(self.arp.get_ref(), ETH_P_ARP, &frames);
        drop(frames);
        let unsent: Vec<ArpOut> = self.outbox.drain(..).skip(sent).collect();
        for o in unsent {
            let key = u32::from(o.ip);
            if !matches!(self.addrs.get(&key), Some(Known::Probing(f)) if f.seq == o.seq) {
                continue;
            }
            if let Some(Known::Probing(f)) = self.addrs.remove(&key) {
                self.running -= 1;
                let why = err.as_ref().map(ToString::to_string).unwrap_or_default();
                tracing::debug!(ip = %o.ip, "arp probe for {} not sent, offering unchecked: {why}", o.ip);
                self.metrics.probed("arp", "unsent");
                f.answer(Verdict::Free);
            }
        }
    }

    fn unsent(&self, p: Probe, method: &'static str, e: &std::io::Error) {
        tracing::debug!(ip = %p.ip, "{method} probe for {} not sent, offering unchecked: {e}", p.ip);
        self.metrics.probed(method, "unsent");
        (p.then)(Verdict::Free);
    }

    fn mac_of(&mut self, ifindex: u32) -> Option<[u8; 6]> {
        let fd = self.arp.get_ref().as_raw_fd();
        *self
            .macs
            .entry(ifindex)
            .or_insert_with(|| interface_mac(fd, ifindex))
    }

    /// Ends the probes whose time is up: nothing answered, so the address is free.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, ip, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            // The entry may be a newer probe of the same address (the first was answered).
            let Some(known) = self.addrs.get_mut(&u32::from(ip)) else {
                continue;
            };
            if !matches!(known, Known::Probing(f) if f.seq == seq) {
                continue;
            }
            if let Known::Probing(f) = std::mem::replace(known, Known::Free(now)) {
                self.running -= 1;
                match f.via {
                    Via::Arp { .. } => self.counts.arp_free.inc(),
                    Via::Icmp => self.counts.icmp_free.inc(),
                };
                f.answer(Verdict::Free);
            }
        }
        let ttl = self.times.cache_ttl;
        if now.duration_since(self.swept) >= ttl {
            self.swept = now;
            self.addrs
                .retain(|_, k| !matches!(k, Known::Free(t) if now.duration_since(*t) >= ttl));
        }
        if self.passive.len() > 4096 {
            self.passive
                .retain(|_, t| now.duration_since(*t) < PASSIVE_EVERY);
        }
        self.metrics.in_flight.set(self.running as i64);
    }

    /// An answer from `ip`: ends its probe as in use, or is reported as late or passive.
    /// `to_probe`: the frame answers one of our probes by its form (an ARP reply to our MAC
    /// and 0.0.0.0, or an echo reply with our id).
    fn heard(
        &mut self,
        ip: Ipv4Addr,
        mac: Option<[u8; 6]>,
        via_icmp: bool,
        seq: u16,
        to_probe: bool,
    ) {
        let now = Instant::now();
        let key = u32::from(ip);
        let probed_free_at = match self.addrs.get(&key) {
            Some(Known::Probing(f)) => {
                // An echo reply must answer this probe's echo; an ARP from the address counts
                // whichever way we asked (the host is there).
                if !via_icmp || (f.via == Via::Icmp && f.seq == seq) {
                    if let Some(Known::Probing(f)) = self.addrs.remove(&key) {
                        self.running -= 1;
                        self.metrics.probed(method(f.via), "in_use");
                        f.answer(Verdict::InUse { mac });
                    }
                    self.metrics.in_flight.set(self.running as i64);
                    return;
                }
                None
            }
            Some(Known::Free(t)) => Some(*t),
            None => None,
        };
        let late = is_late(to_probe, probed_free_at, now, self.times.cache_ttl);
        if probed_free_at.is_some() && (late || !via_icmp) {
            // Something claims it: probe it again next time rather than trust the cache.
            self.addrs.remove(&key);
        }
        if !late && via_icmp {
            // Someone else's ping (or a reply to a probe long gone): not ours to judge.
            return;
        }
        if !late {
            let key = (key, mac.unwrap_or_default());
            if self
                .passive
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < PASSIVE_EVERY)
            {
                return;
            }
            self.passive.insert(key, now);
        }
        if self.sightings.try_send(Sighting { ip, mac, late }).is_err() {
            self.metrics.sightings_dropped.inc();
        }
    }

    fn read_arp(&mut self, buf: &mut [u8]) {
        loop {
            let rx = match recv_frame(self.arp.get_ref(), buf) {
                Ok(rx) => rx,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("ARP receive failed: {e}");
                    return;
                }
            };
            if rx.pkttype == PACKET_OUTGOING {
                continue;
            }
            let frame = &buf[..rx.len.min(buf.len())];
            let seen = match arp::parse_arp(frame) {
                Ok(s) => s,
                Err(e) => {
                    self.metrics.malformed("arp");
                    tracing::debug!(ifindex = rx.ifindex, "dropped malformed ARP frame: {e}");
                    continue;
                }
            };
            // A probe (sender 0.0.0.0) claims nothing.
            if seen.sender_ip.is_unspecified() {
                continue;
            }
            let to_probe = answers_our_probe(&seen, frame, |m| {
                self.macs.values().any(|o| o.as_ref() == Some(m))
            });
            self.heard(seen.sender_ip, Some(seen.sender_mac), false, 0, to_probe);
        }
    }

    fn read_icmp(&mut self, buf: &mut [u8]) {
        loop {
            let n = match self.icmp.get_ref().read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("ICMP receive failed: {e}");
                    return;
                }
            };
            match icmp::parse(&buf[..n]) {
                // An echo reply with our id answers one of our echoes.
                Ok(Icmp::EchoReply(r)) if r.id == self.icmp_id => {
                    self.heard(r.from, None, true, r.seq, true)
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.malformed("icmp");
                    tracing::debug!(len = n, "dropped malformed ICMP datagram: {e}");
                }
            }
        }
    }
}

/// The first point of the grid `origin + k * step` at or after `t`.
fn on_grid(t: Instant, origin: Instant, step: Duration) -> Instant {
    let since = t.saturating_duration_since(origin).as_nanos();
    let step_ns = step.as_nanos().max(1);
    let past = since % step_ns;
    if past == 0 {
        t.max(origin)
    } else {
        t + Duration::from_nanos((step_ns - past) as u64)
    }
}

/// Is this ARP frame a reply to one of our probes? RFC 5227 §2.1.1: a host defends its
/// address against a probe with an ARP reply to the prober, whose probe said 0.0.0.0: the
/// reply's target is the prober's MAC and 0.0.0.0. A gratuitous announcement (target IP =
/// sender IP), a request, or a reply to another host's probe (a client checking the address
/// it was just given) is a claim seen in passing instead. `frame` is the whole Ethernet
/// frame `seen` was parsed from (so at least [`arp::GARP_LEN`] bytes).
fn answers_our_probe(seen: &ArpSeen, frame: &[u8], ours: impl Fn(&[u8; 6]) -> bool) -> bool {
    // Target hardware address: 14 Ethernet + 8 ARP header + 6 sender MAC + 4 sender IP.
    let Some(target_mac) = frame.get(32..38).and_then(|m| <[u8; 6]>::try_from(m).ok()) else {
        return false;
    };
    seen.operation == ARP_REPLY && seen.target_ip.is_unspecified() && ours(&target_mac)
}

/// Is an answer from an address a late answer to its probe? Only in the form of an answer
/// to our probe, and only while the probe's "free" still stands (within `cache_ttl` of the
/// probe's end): later, or in another form, it is a claim seen in passing.
fn is_late(
    to_probe: bool,
    probed_free_at: Option<Instant>,
    now: Instant,
    cache_ttl: Duration,
) -> bool {
    to_probe && probed_free_at.is_some_and(|t| now.duration_since(t) < cache_ttl)
}

fn method(via: Via) -> &'static str {
    match via {
        Via::Arp { .. } => "arp",
        Via::Icmp => "icmp",
    }
}

/// The Ethernet MAC of interface `ifindex`, asked through the packet socket `fd`: in the
/// network namespace the probes leave in, which need not be the calling thread's. None for
/// an interface without one (loopback, a tunnel).
fn interface_mac(fd: RawFd, ifindex: u32) -> Option<[u8; 6]> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_ifindex = libc::c_int::try_from(ifindex).ok()?;
    // SAFETY: both ioctls read and write one ifreq through a valid pointer.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFNAME as _, &mut req) < 0
            || libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut req) < 0
        {
            return None;
        }
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware address member.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *m = *d as u8;
    }
    (mac != [0; 6]).then_some(mac)
}

/// Opens the prober's sockets; needs CAP_NET_RAW now, never again.
pub fn open_sockets() -> std::io::Result<ConflictSockets> {
    let arp = crate::vip::packet::packet_socket(ETH_P_ARP, true)?;
    // Our own probes would come back to this socket, one read each, only to be dropped
    // (Linux 4.20+; older kernels loop them back and `read_arp` drops them).
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    let _ = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&arp),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let icmp = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW.nonblocking().cloexec(),
        Some(socket2::Protocol::ICMPV4),
    )?;
    Ok(ConflictSockets { arp, icmp })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
    const CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x33];
    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 120);

    /// How a host defends `IP` against a probe from `prober` (RFC 5227; Linux does this).
    fn defence_to(prober: [u8; 6]) -> Vec<u8> {
        let mut f = arp::garp_frame(HOST, IP).to_vec();
        f[21] = 2; // operation: reply
        f[32..38].copy_from_slice(&prober);
        f[38..42].copy_from_slice(&[0, 0, 0, 0]);
        f
    }

    fn to_us(frame: &[u8]) -> bool {
        let seen = arp::parse_arp(frame).expect("an ARP frame");
        answers_our_probe(&seen, frame, |m| *m == OURS)
    }

    #[test]
    fn only_a_reply_to_our_probe_answers_it() {
        assert!(to_us(&defence_to(OURS)));
        // A client checking the address it was just given gets the same answer: not ours.
        assert!(!to_us(&defence_to(CLIENT)));
        // Announcements claim the address to everyone, as a request or as a reply.
        let garp = arp::garp_frame(HOST, IP);
        assert!(!to_us(&garp));
        let mut garp_reply = garp.to_vec();
        garp_reply[21] = 2;
        assert!(!to_us(&garp_reply));
        // A request for our MAC is someone asking, not answering.
        let mut request = defence_to(OURS);
        request[21] = 1;
        assert!(!to_us(&request));
    }

    #[test]
    fn wake_ups_fall_on_the_grid_never_before_they_are_due() {
        let origin = Instant::now();
        let step = Duration::from_millis(2);
        let at = |us: u64| origin + Duration::from_micros(us);
        assert_eq!(on_grid(at(0), origin, step), at(0));
        assert_eq!(on_grid(at(1), origin, step), at(2_000));
        assert_eq!(on_grid(at(1_999), origin, step), at(2_000));
        assert_eq!(on_grid(at(2_000), origin, step), at(2_000));
        assert_eq!(on_grid(at(200_001), origin, step), at(202_000));
        // Before the grid began: its first point.
        assert_eq!(
            on_grid(origin - Duration::from_millis(5), origin, step),
            origin
        );
    }

    #[test]
    fn an_answer_is_late_only_while_the_probes_free_verdict_stands() {
        let ttl = Duration::from_secs(10);
        let end = Instant::now();
        let at = |s| end + Duration::from_secs(s);
        assert!(is_late(true, Some(end), at(1), ttl));
        assert!(
            !is_late(true, Some(end), at(10), ttl),
            "past probe_cache_ttl"
        );
        assert!(!is_late(true, None, at(1), ttl), "never probed");
        assert!(!is_late(false, Some(end), at(1), ttl), "an announcement");
    }
}

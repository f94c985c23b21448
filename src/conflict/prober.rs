//! The prober: one task that sends ARP probes and ICMP echoes and tells each waiting OFFER
//! whether its address answered.
//!
//! Nothing waits in here but the task itself: a caller gets a oneshot and the task resolves
//! it when an answer arrives or the timeout passes. Every probe has the same timeout, so the
//! deadlines sit in arrival order in one queue and the task sleeps until the first: a
//! thousand probes in flight cost a map entry each and no timer of their own.
//!
//! Invariants:
//! - One probe per address in flight: a retransmitted DISCOVER joins the running probe.
//! - An address found free is not probed again within `probe_cache_ttl`; an answer from it
//!   within that time is a late conflict, reported as a [`Sighting`] for next time.
//! - An ARP from an address that is not being probed is reported (at most once a minute per
//!   address and MAC) for passive detection; the DHCP server decides whether it conflicts.
//! - Malformed frames and datagrams are counted, logged at debug and dropped.
//! - A probe that cannot be sent counts as free: conflict detection never stops DHCP.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::icmp::{self, Icmp};
use super::{ConflictMetrics, ConflictSockets};
use crate::vip::arp::{self, ETH_P_ARP};
use crate::vip::packet::{recv_frame, send_frame};

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
    done: oneshot::Sender<Verdict>,
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
        // SAFETY: both are valid non-blocking sockets that the AsyncFds own and that nothing
        // else closes or reads.
        let (arp, icmp) = unsafe {
            (
                AsyncFd::register(sockets.arp)?,
                AsyncFd::register(sockets.icmp)?,
            )
        };
        let handle_metrics = metrics.clone();
        let task = Task {
            arp,
            icmp,
            icmp_id: std::process::id() as u16,
            seq: 0,
            times,
            metrics,
            macs: HashMap::new(),
            inflight: HashMap::new(),
            deadlines: VecDeque::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            passive: HashMap::new(),
            sightings: sight_tx,
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

    /// Probes `ip`; the answer comes when the probe ends. Resolves to `Free` at once when
    /// the task is gone (shutdown) or its queue is full: DHCP goes on without the check.
    pub fn probe(&self, ip: Ipv4Addr, via: Via) -> oneshot::Receiver<Verdict> {
        let (done, rx) = oneshot::channel();
        if let Err(e) = self.tx.try_send(Probe { ip, via, done }) {
            let p = match e {
                mpsc::error::TrySendError::Full(p) => {
                    self.metrics.probed("queue", "full");
                    p
                }
                mpsc::error::TrySendError::Closed(p) => p,
            };
            let _ = p.done.send(Verdict::Free);
        }
        rx
    }
}

struct InFlight {
    via: Via,
    deadline: Instant,
    seq: u16,
    waiters: Vec<oneshot::Sender<Verdict>>,
}

struct Task {
    arp: AsyncFd<OwnedFd>,
    icmp: AsyncFd<socket2::Socket>,
    icmp_id: u16,
    seq: u16,
    times: ProbeTimes,
    metrics: ConflictMetrics,
    /// Interface MACs by index (the ARP probe's source), loaded when first needed.
    macs: HashMap<u32, [u8; 6]>,
    inflight: HashMap<Ipv4Addr, InFlight>,
    /// (deadline, address) in the order probes started: deadlines only grow.
    deadlines: VecDeque<(Instant, Ipv4Addr)>,
    /// Addresses probed free, and when.
    recent: HashMap<Ipv4Addr, Instant>,
    recent_order: VecDeque<(Instant, Ipv4Addr)>,
    /// When each (address, MAC) was last reported by passive detection.
    passive: HashMap<(Ipv4Addr, [u8; 6]), Instant>,
    sightings: mpsc::Sender<Sighting>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Probe>, shutdown: CancellationToken) {
        let mut frame = [0u8; 2048];
        let mut dgram = [0u8; 2048];
        loop {
            let next = self.deadlines.front().map(|(d, _)| *d);
            let sleep = async {
                match next {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => {
                    let Some(p) = p else { return };
                    self.start(p);
                    // Whatever else queued meanwhile, without a trip through select.
                    while let Ok(p) = rx.try_recv() {
                        self.start(p);
                    }
                }
                r = self.arp.readable() => {
                    if let Ok(mut guard) = r {
                        guard.clear_ready();
                        self.read_arp(&mut frame);
                    }
                }
                r = self.icmp.readable() => {
                    if let Ok(mut guard) = r {
                        guard.clear_ready();
                        self.read_icmp(&mut dgram);
                    }
                }
                _ = sleep => {}
            }
            self.expire(Instant::now());
        }
    }

    fn start(&mut self, p: Probe) {
        let now = Instant::now();
        if self
            .recent
            .get(&p.ip)
            .is_some_and(|t| now.duration_since(*t) < self.times.cache_ttl)
        {
            self.metrics.probed("cached", "free");
            let _ = p.done.send(Verdict::Free);
            return;
        }
        if let Some(f) = self.inflight.get_mut(&p.ip) {
            f.waiters.push(p.done);
            return;
        }
        self.seq = self.seq.wrapping_add(1);
        let via = match p.via {
            Via::Arp { ifindex } => match self.mac_of(ifindex) {
                Some(mac) => {
                    let sent = send_frame(
                        self.arp.get_ref(),
                        ifindex,
                        ETH_P_ARP,
                        [0xff; 6],
                        &arp::probe_frame(mac, p.ip),
                    );
                    if let Err(e) = sent {
                        self.unsent(p, "arp", &e);
                        return;
                    }
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
        let deadline = now + self.times.timeout;
        self.deadlines.push_back((deadline, p.ip));
        self.inflight.insert(
            p.ip,
            InFlight {
                via,
                deadline,
                seq: self.seq,
                waiters: vec![p.done],
            },
        );
        self.metrics.in_flight.set(self.inflight.len() as i64);
    }

    fn unsent(&self, p: Probe, method: &'static str, e: &std::io::Error) {
        tracing::debug!(ip = %p.ip, "{method} probe for {} not sent, offering unchecked: {e}", p.ip);
        self.metrics.probed(method, "unsent");
        let _ = p.done.send(Verdict::Free);
    }

    fn mac_of(&mut self, ifindex: u32) -> Option<[u8; 6]> {
        if !self.macs.contains_key(&ifindex) {
            self.macs = interface_macs();
        }
        self.macs.get(&ifindex).copied()
    }

    /// Ends the probes whose time is up: nothing answered, so the address is free.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, ip)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            // The entry may be a newer probe of the same address (the first was answered).
            if self
                .inflight
                .get(&ip)
                .is_some_and(|f| f.deadline == deadline)
            {
                if let Some(f) = self.inflight.remove(&ip) {
                    self.metrics.probed(method(f.via), "free");
                    for w in f.waiters {
                        let _ = w.send(Verdict::Free);
                    }
                    self.recent.insert(ip, now);
                    self.recent_order.push_back((now, ip));
                }
            }
        }
        while let Some(&(t, ip)) = self.recent_order.front() {
            if now.duration_since(t) < self.times.cache_ttl {
                break;
            }
            self.recent_order.pop_front();
            if self.recent.get(&ip) == Some(&t) {
                self.recent.remove(&ip);
            }
        }
        if self.passive.len() > 4096 {
            self.passive
                .retain(|_, t| now.duration_since(*t) < PASSIVE_EVERY);
        }
        self.metrics.in_flight.set(self.inflight.len() as i64);
    }

    /// An answer from `ip`: ends its probe as in use, or is reported as late or passive.
    fn heard(&mut self, ip: Ipv4Addr, mac: Option<[u8; 6]>, via_icmp: bool, seq: u16) {
        if let Some(f) = self.inflight.get(&ip) {
            // An echo reply must answer this probe's echo; an ARP from the address counts
            // whichever way we asked (the host is there).
            if !via_icmp || (f.via == Via::Icmp && f.seq == seq) {
                if let Some(f) = self.inflight.remove(&ip) {
                    self.metrics.probed(method(f.via), "in_use");
                    for w in f.waiters {
                        let _ = w.send(Verdict::InUse { mac });
                    }
                }
                self.metrics.in_flight.set(self.inflight.len() as i64);
                return;
            }
        }
        let now = Instant::now();
        let late = self
            .recent
            .get(&ip)
            .is_some_and(|t| now.duration_since(*t) < self.times.cache_ttl);
        if late {
            // Probe it again next time rather than trust the cache.
            self.recent.remove(&ip);
        } else if via_icmp {
            // Someone else's ping (or a reply to a probe long gone): not ours to judge.
            return;
        }
        if !late {
            let key = (ip, mac.unwrap_or_default());
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
            let seen = match arp::parse_arp(&buf[..rx.len.min(buf.len())]) {
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
            self.heard(seen.sender_ip, Some(seen.sender_mac), false, 0);
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
                Ok(Icmp::EchoReply(r)) if r.id == self.icmp_id => {
                    self.heard(r.from, None, true, r.seq)
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

fn method(via: Via) -> &'static str {
    match via {
        Via::Arp { .. } => "arp",
        Via::Icmp => "icmp",
    }
}

/// Every interface's MAC by index.
fn interface_macs() -> HashMap<u32, [u8; 6]> {
    let mut out = HashMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for a in addrs {
        let Some(link) = a.address.as_ref().and_then(|x| x.as_link_addr()) else {
            continue;
        };
        if let Some(mac) = link.addr().filter(|m| *m != [0; 6]) {
            out.insert(link.ifindex() as u32, mac);
        }
    }
    out
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

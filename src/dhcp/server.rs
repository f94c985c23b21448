//! The socket loop around the pure handler: receive with `IP_PKTINFO` (which interface, which
//! destination), check, rate-limit, handle, and for an ACK make the lease durable (group
//! commit) and replicated before the reply leaves, from the address the client talks to.
//!
//! Invariants:
//! - Only a node whose HA state is ACTIVE answers; others count and drop.
//! - No DHCPACK leaves before its lease is committed durably (and, with HA, acknowledged by
//!   the standby or `ha.max_ack_delay` passed). A failed commit means no ACK.
//! - A lease event is published under the same condition as its ACK, in handling order
//!   (`announce`): a failed commit publishes nothing.
//! - Lock order: handler state, then the lease index. Nobody takes them the other way round.
//! - Malformed input is counted by reason and logged at debug; it never stops the loop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::announce::Announcer;
use super::handler::{handle, DhcpState, Ingress};
use super::packet::{self, Dest, Reply};
use super::plan::Plan;
use super::pools::{self, PoolBoard};
use super::probe::{self, Probing};
use crate::config::Config;
use crate::conflict::api::ClearRequest;
use crate::conflict::Sighting;
use crate::events::{Event, EventBus, EventData, EventKind};
use crate::ha::role::ServeLease;
use crate::ha::HaState;
use crate::health::Progress;
use crate::lease::{LeaseStore, Replication};
use crate::pktinfo;

use super::metrics::{
    type_name, DhcpMetrics, ReasonLabel, ReplyLabel, ScopeLabel, SubnetLabel, TypeLabel,
};
use super::ratelimit::RateLimiter;
use super::sockets::Interfaces;

// ---------------------------------------------------------------------------------------------
// The server

/// Everything the loop needs, handed in by the daemon.
pub struct DhcpServer {
    pub sockets: Vec<std::net::UdpSocket>,
    pub config: Arc<Config>,
    /// Reloaded configs (SIGHUP): subnets, pools, reservations, options and timers follow.
    pub updates: watch::Receiver<Arc<Config>>,
    pub store: Arc<LeaseStore>,
    pub ha: watch::Receiver<HaState>,
    /// HA's confirmation that this node still serves (always valid standalone): after a
    /// stall, no DISCOVER queued meanwhile is answered before HA decided.
    pub serve_lease: ServeLease,
    pub replication: Option<Replication>,
    pub bus: EventBus,
    pub node: String,
    pub metrics: DhcpMetrics,
    /// Where the housekeeping leaves the pool usage for the API.
    pub pools: PoolBoard,
    pub progress: Progress,
    pub shutdown: CancellationToken,
    /// Conflict detection: the prober and what it hears outside its probes (None when
    /// `[conflict_detection] enabled = false`).
    pub conflicts: Option<(Probing, mpsc::Receiver<Sighting>)>,
    /// `DELETE /api/v1/conflicts/{ip}` requests.
    pub conflict_clears: Option<mpsc::Receiver<ClearRequest>>,
}

pub(super) struct Shared {
    pub(super) state: Mutex<DhcpState>,
    limiter: Mutex<RateLimiter>,
    ifaces: std::sync::RwLock<Interfaces>,
    pub(super) store: Arc<LeaseStore>,
    pub(super) ha: watch::Receiver<HaState>,
    pub(super) serve_lease: ServeLease,
    pub(super) replication: Option<Replication>,
    pub(super) max_ack_delay: Duration,
    /// Lease events, each published once its commit is durable (see [`Announcer`]).
    pub(super) announce: Announcer,
    pub(super) node: String,
    pub(super) metrics: DhcpMetrics,
    pools: PoolBoard,
    client_port: u16,
    relay_port: u16,
    /// Conflict detection before OFFER (see `probe`).
    pub(super) probing: Option<Probing>,
}

impl DhcpServer {
    /// Runs until shutdown: one receive task per socket plus housekeeping (offer and lease
    /// expiry, allocator rebuild, gauges, interface refresh).
    pub async fn run(self) -> std::io::Result<()> {
        let plan = Plan::from_config(&self.config);
        let now = crate::events::now_ms();
        let state = {
            let ix = self.store.index();
            DhcpState::new(plan, &ix, now)
        };
        let port = self.config.server.dhcp_port;
        let (probing, sightings) = match self.conflicts {
            Some((p, s)) => (Some(p), Some(s)),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            limiter: Mutex::new(RateLimiter::new(
                self.config.server.rate_limit_per_mac,
                self.config.server.rate_limit_global,
            )),
            ifaces: std::sync::RwLock::new(Interfaces::load()),
            store: self.store.clone(),
            ha: self.ha.clone(),
            serve_lease: self.serve_lease.clone(),
            replication: self.replication.clone(),
            max_ack_delay: self.config.ha.max_ack_delay.0,
            announce: Announcer::start(self.bus.clone()),
            node: self.node.clone(),
            metrics: self.metrics.clone(),
            pools: self.pools.clone(),
            client_port: port.saturating_add(1),
            relay_port: port,
            probing,
        });
        let mut tasks = tokio::task::JoinSet::new();
        for s in self.sockets {
            // Read interest only: see [`DhcpSocket`].
            // SAFETY: the AsyncFd owns the socket, which nothing else closes.
            let sock = Arc::new(unsafe { AsyncFd::register_with_interest(s, Interest::READABLE)? });
            let sh = shared.clone();
            let sd = self.shutdown.clone();
            let progress = self.progress.clone();
            tasks.spawn(async move { receive_loop(sh, sock, sd, progress).await });
        }
        {
            let sh = shared.clone();
            let sd = self.shutdown.clone();
            let progress = self.progress.clone();
            let updates = self.updates.clone();
            tasks.spawn(async move { housekeeping(sh, sd, progress, updates).await });
        }
        if let Some(clears) = self.conflict_clears {
            let sh = shared.clone();
            let sd = self.shutdown.clone();
            tasks.spawn(async move { probe::conflict_loop(sh, sightings, clears, sd).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// A request as it arrived: which interface, which destination.
struct Received {
    len: usize,
    ifindex: u32,
    /// The request's IP destination (header), e.g. 255.255.255.255 or our address.
    dst: Ipv4Addr,
    truncated: bool,
}

fn recv_pktinfo(fd: i32, buf: &mut [u8]) -> std::io::Result<Received> {
    // MSG_TRUNC: the real length, so an oversize request is seen as such.
    let rx = pktinfo::recv_one(fd, buf, libc::MSG_TRUNC)?;
    Ok(Received {
        len: rx.len,
        ifindex: rx.ifindex,
        dst: match rx.dst {
            Some(IpAddr::V4(a)) => a,
            _ => Ipv4Addr::BROADCAST,
        },
        truncated: rx.truncated,
    })
}

async fn receive_loop(
    sh: Arc<Shared>,
    sock: Arc<DhcpSocket>,
    shutdown: CancellationToken,
    progress: Progress,
) {
    // One byte more than the largest request we accept, so an oversize one is seen as such.
    let mut buf = vec![0u8; packet::MAX_DATAGRAM + 1];
    let fd = sock.as_raw_fd();
    // One timer for the loop (not one per packet): wakes the loop at least every second so
    // progress ticks while idle.
    let idle = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(idle);
    loop {
        progress.tick();
        let got = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = &mut idle => {
                idle.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                continue;
            }
            r = sock.async_io(Interest::READABLE, |_| recv_pktinfo(fd, &mut buf)) => r,
        };
        let rx = match got {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("DHCP receive failed: {e}");
                continue;
            }
        };
        let t0 = Instant::now();
        let data = &buf[..rx.len.min(buf.len())];
        let parsed = if rx.truncated || rx.len > packet::MAX_DATAGRAM {
            Err(packet::Malformed::Oversize)
        } else {
            packet::parse(data)
        };
        let req = match parsed {
            Ok(r) => r,
            Err(m) => {
                sh.metrics
                    .malformed
                    .get_or_create(&ReasonLabel { reason: m.label() })
                    .inc();
                tracing::debug!(
                    len = rx.len,
                    reason = m.label(),
                    "dropped malformed DHCP datagram: {m}"
                );
                continue;
            }
        };
        sh.metrics
            .received
            .get_or_create(&TypeLabel {
                r#type: type_name(req.msg_type),
            })
            .inc();
        if !sh.ha.borrow().serves() || !sh.serve_lease.valid() {
            sh.metrics.ignored("not_active");
            continue;
        }
        let now = crate::events::now_ms();
        let limited = sh.limiter.lock().unwrap_or_else(|e| e.into_inner()).allow(
            req.mac(),
            req.msg_type == MessageType::Discover,
            now,
        );
        if let Err(scope) = limited {
            sh.metrics
                .rate_limited
                .get_or_create(&ScopeLabel { scope })
                .inc();
            continue;
        }
        let ingress = {
            let ifs = sh.ifaces.read().unwrap_or_else(|e| e.into_inner());
            let (name, addrs) = ifs.by_index.get(&rx.ifindex).cloned().unwrap_or_default();
            Ingress {
                ifname: (!name.is_empty()).then_some(name),
                if_addrs: addrs,
                dst: rx.dst,
            }
        };
        if ingress.ifname.is_none() && rx.ifindex != 0 {
            // A new interface: refresh the table for next time.
            *sh.ifaces.write().unwrap_or_else(|e| e.into_inner()) = Interfaces::load();
        }
        let (mut outcome, pending, announced, held, via) = {
            let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut ix = sh.store.index();
            let mut out = handle(&mut st, &mut ix, &req, &ingress, now);
            let mut events: Vec<Event> = std::mem::take(&mut out.events)
                .into_iter()
                .filter(|(kind, _)| sh.announce.wants(*kind))
                .map(|(kind, ev)| Event::new(kind, sh.node.clone(), EventData::Lease(ev)))
                .collect();
            // An OFFER to probe first: its event waits with it. How to probe is decided
            // here, under the lock this request already holds.
            let (held, via): (Vec<Event>, _) = match (&sh.probing, out.probe, &out.reply) {
                (Some(_), Some(ip), Some(_)) => {
                    let (offer, rest) = events
                        .into_iter()
                        .partition(|e| e.kind == EventKind::LeaseOffer);
                    events = rest;
                    (
                        offer,
                        Some(probe::via_for(&st.plan, &ingress, rx.ifindex, ip)),
                    )
                }
                _ => (Vec::new(), None),
            };
            // Submitted and announced under the locks: disk order = index order = event order.
            let pending = (!out.commit.is_empty()).then(|| sh.store.submit(out.commit.clone()));
            let announced = match pending {
                Some(_) => sh.announce.once_durable(events),
                None => {
                    sh.announce.now(events);
                    None
                }
            };
            (out, pending, announced, held, via)
        };
        if let Some(why) = outcome.ignored {
            sh.metrics.ignored(why);
        }
        let to = ReplyTo {
            sock: sock.clone(),
            ifindex: rx.ifindex,
            src: (!rx.dst.is_broadcast() && !rx.dst.is_unspecified()).then_some(rx.dst),
            class: outcome.class.unwrap_or("none"),
        };
        let to_probe = match (via, outcome.probe) {
            (Some(via), Some(ip)) => outcome.reply.take().map(|r| (ip, via, r)),
            _ => None,
        };
        if let Some((ip, via, reply)) = to_probe {
            // Probed off the receive path: the prober sends the OFFER when the address is
            // found free, and this loop goes on with the next request.
            let offer = probe::HeldOffer {
                sh: sh.clone(),
                pending: probe::Pending {
                    req,
                    ingress,
                    to,
                    t0,
                },
                ip,
                via,
                reply,
                events: held,
                attempt: 1,
            };
            probe::offer_when_free(offer, t0);
            continue;
        }
        match (outcome.reply, pending) {
            (Some(reply), None) => {
                send_reply(&sh, &to, &reply).await;
            }
            (reply, Some(pending)) => {
                // Wait for the disk (and the standby) off the receive path, so the next
                // requests can join the same group commit.
                let sh = sh.clone();
                let committed = outcome.commit;
                tokio::spawn(async move {
                    match pending.wait().await {
                        Ok(_) => {}
                        Err(e) => {
                            // `announced` drops here: the events of a withheld ACK are
                            // never published.
                            sh.metrics.commit_failed.inc();
                            // The store logs its failure once, when it begins; a line per
                            // withheld reply would flood the log while the disk is full.
                            tracing::debug!("lease commit failed, reply withheld: {e}");
                            return;
                        }
                    }
                    if let Some(rep) = &sh.replication {
                        sh.metrics
                            .replicated(rep.replicate(committed, sh.max_ack_delay).await);
                    }
                    // Exactly when the ACK may leave, and not before.
                    if let Some(a) = announced {
                        a.confirm();
                    }
                    if let Some(reply) = reply {
                        send_reply(&sh, &to, &reply).await;
                        sh.metrics.ack_latency.observe(t0.elapsed().as_secs_f64());
                    }
                });
            }
            (None, None) => {}
        }
    }
}

/// Where the reply to one request leaves from, and what it is counted as: what the request
/// told us that RFC 2131 §4.1 routing needs, kept while the reply waits (for the disk, the
/// standby or a probe).
pub(super) struct ReplyTo {
    /// The socket the request came in on: replies leave from port 67 as clients expect.
    pub sock: Arc<DhcpSocket>,
    /// The interface the request came in on: a broadcast reply must leave by it.
    pub ifindex: u32,
    /// The address the request reached (None when it was broadcast): the reply's source.
    pub src: Option<Ipv4Addr>,
    /// The request's first client class: the reply metrics' label.
    pub class: &'static str,
}

/// Sends per RFC 2131 §4.1 from `to.src` (the address the request reached) or else the
/// server identifier; broadcasts leave through the interface the request came in on.
pub(super) async fn send_reply(sh: &Shared, to: &ReplyTo, reply: &Reply) {
    let bytes = reply.encode();
    let sock = &to.sock;
    let fd = sock.as_raw_fd();
    let (dst, ifx, from) = route(sh, fd, reply, to.ifindex, to.src);
    let attempt = |spec: Ipv4Addr| send_from(fd, &bytes, dst, ifx, spec);
    let mut r = send_waiting(sock, || attempt(from)).await;
    if r.is_err() && !from.is_unspecified() {
        // The server identifier is not a local address (e.g. a VIP this node does not
        // hold): let the kernel choose the source.
        r = send_waiting(sock, || attempt(Ipv4Addr::UNSPECIFIED)).await;
    }
    sent(sh, reply, to.class, dst, r);
}

/// A DHCP socket, registered with the runtime for reads only. With write interest too, every
/// reply the receiver consumed freed send-buffer space, raised an EPOLLOUT edge and woke a
/// parked runtime thread for nothing: one wasted wake-up per reply sent from a task other
/// than the one that received the request (an OFFER after its probe, an ACK after its
/// commit).
pub(super) type DhcpSocket = AsyncFd<std::net::UdpSocket>;

/// Sends with `send`; when the socket's buffer is full, waits for room through a registration
/// of its own (a duplicate of the descriptor, for write interest), made for this wait only.
async fn send_waiting<T: AsFd + AsRawFd>(
    sock: &AsyncFd<T>,
    mut send: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<()> {
    loop {
        match send() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => return r,
        }
        let dup = sock.get_ref().as_fd().try_clone_to_owned()?;
        // SAFETY: the AsyncFd owns the duplicate, which nothing else closes.
        let room = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE)? };
        room.writable().await?.clear_ready();
    }
}

/// [`send_reply`] for a caller that must not wait (the prober's task): false, and nothing
/// sent, when the socket is not writable right now.
pub(super) fn try_send_reply(sh: &Shared, to: &ReplyTo, reply: &Reply) -> bool {
    let bytes = reply.encode();
    let sock = &to.sock;
    let fd = sock.as_raw_fd();
    let (dst, ifx, from) = route(sh, fd, reply, to.ifindex, to.src);
    let attempt = |spec: Ipv4Addr| send_from(fd, &bytes, dst, ifx, spec);
    let mut r = attempt(from);
    if r.as_ref()
        .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock)
        && !from.is_unspecified()
    {
        r = attempt(Ipv4Addr::UNSPECIFIED);
    }
    if r.as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
    {
        return false;
    }
    sent(sh, reply, to.class, dst, r);
    true
}

/// Where a reply goes: its destination, the interface it must leave by (0: any) and its
/// source address per RFC 2131 §4.1.
fn route(
    sh: &Shared,
    fd: i32,
    reply: &Reply,
    ifindex: u32,
    src: Option<Ipv4Addr>,
) -> (SocketAddrV4, u32, Ipv4Addr) {
    let broadcast = (
        SocketAddrV4::new(Ipv4Addr::BROADCAST, sh.client_port),
        ifindex,
    );
    let (dst, ifx) = match reply.dest {
        Dest::Relay(g) => (SocketAddrV4::new(g, sh.relay_port), 0),
        Dest::Unicast(c) => (SocketAddrV4::new(c, sh.client_port), 0),
        Dest::Broadcast => broadcast,
        Dest::Hardware { ip, mac } => {
            let ifname = sh
                .ifaces
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .by_index
                .get(&ifindex)
                .map(|(n, _)| n.clone());
            match ifname.map(|n| set_neighbour(fd, &n, ip, mac)) {
                Some(Ok(())) => (SocketAddrV4::new(ip, sh.client_port), ifindex),
                Some(Err(e)) => {
                    tracing::debug!(ip = %ip, "no ARP entry for {ip}, broadcasting instead: {e}");
                    broadcast
                }
                None => broadcast,
            }
        }
    };
    (dst, ifx, src.unwrap_or(reply.server_id))
}

fn send_from(
    fd: i32,
    bytes: &[u8],
    dst: SocketAddrV4,
    ifindex: u32,
    from: Ipv4Addr,
) -> std::io::Result<()> {
    let src = pktinfo::Source {
        addr: Some(IpAddr::V4(from)),
        ifindex,
    };
    pktinfo::send_one(fd, false, bytes, SocketAddr::V4(dst), src)
}

/// Counts a reply that left, or logs why it did not.
fn sent(
    sh: &Shared,
    reply: &Reply,
    class: &'static str,
    dst: SocketAddrV4,
    r: std::io::Result<()>,
) {
    match r {
        Ok(_) => {
            sh.metrics
                .sent
                .get_or_create(&ReplyLabel {
                    r#type: type_name(reply.msg_type),
                    class,
                })
                .inc();
        }
        Err(e) => {
            tracing::debug!(dest = %dst, "sending DHCP {} to {dst} failed: {e}", type_name(reply.msg_type))
        }
    }
}

/// Tells the kernel that `ip` is at `mac` on `ifname` (SIOCSARP, needs CAP_NET_ADMIN), so a
/// unicast to a client that has no address yet needs no ARP exchange it could not answer.
/// The entry is an ordinary one (not permanent): the kernel ages it out like a learned one.
fn set_neighbour(fd: i32, ifname: &str, ip: Ipv4Addr, mac: [u8; 6]) -> std::io::Result<()> {
    // SAFETY: arpreq is plain old data; all-zero is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let pa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in a sockaddr (16 bytes each); both are plain old data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            std::ptr::from_ref(&pa).cast::<u8>(),
            std::ptr::from_mut(&mut req.arp_pa).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr_in>(),
        );
    }
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, m) in req.arp_ha.sa_data.iter_mut().zip(mac) {
        *d = m as libc::c_char;
    }
    req.arp_flags = libc::ATF_COM;
    let name = ifname.as_bytes();
    if name.len() >= req.arp_dev.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {ifname:?} too long"),
        ));
    }
    for (d, b) in req.arp_dev.iter_mut().zip(name) {
        *d = *b as libc::c_char;
    }
    // SAFETY: SIOCSARP reads one arpreq, which lives until the call returns.
    let r = unsafe { libc::ioctl(fd, libc::SIOCSARP, &req) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

async fn housekeeping(
    sh: Arc<Shared>,
    shutdown: CancellationToken,
    progress: Progress,
    mut updates: watch::Receiver<Arc<Config>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    updates.mark_unchanged();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Ok(()) = updates.changed() => {
                let cfg = updates.borrow_and_update().clone();
                apply_config(&sh, &cfg, crate::events::now_ms());
                continue;
            }
            _ = tick.tick() => {}
        }
        progress.tick();
        n += 1;
        let now = crate::events::now_ms();
        sh.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire_offers(now);
        if sh.ha.borrow().serves() {
            match sh.store.expire_due(now / 1000).await {
                Ok(gone) => {
                    if !gone.is_empty() {
                        tracing::info!(count = gone.len(), "{} leases expired", gone.len());
                    }
                    let events: Vec<Event> = gone
                        .iter()
                        .map(|l| {
                            Event::new(
                                EventKind::LeaseExpire,
                                sh.node.clone(),
                                EventData::Lease(l.event()),
                            )
                        })
                        .collect();
                    // Durable already (expire_due waited for the commit); like an ACK, the
                    // events wait for the standby too.
                    if let (Some(rep), false) = (&sh.replication, gone.is_empty()) {
                        sh.metrics
                            .replicated(rep.replicate(gone, sh.max_ack_delay).await);
                    }
                    sh.announce.now(events);
                }
                Err(e) if e.store_failed() => {} // logged once by the store
                Err(e) => tracing::error!("lease expiry failed: {e}"),
            }
        }
        if n % 5 == 1 {
            refresh(&sh, now);
        }
    }
}

/// A reloaded config (already validated): the handler serves from a plan of the new subnets
/// at once. Lock order as everywhere: handler state, then the index.
fn apply_config(sh: &Shared, cfg: &Config, now_ms: u64) {
    let plan = Plan::from_config(cfg);
    let (subnets, pools) = (
        plan.subnets.len(),
        plan.subnets.iter().map(|s| s.pools.len()).sum::<usize>(),
    );
    {
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        let ix = sh.store.index();
        st.replace_plan(plan, &ix, now_ms);
    }
    refresh(sh, now_ms);
    tracing::info!(
        subnets,
        pools,
        "DHCP serves the reloaded config: {subnets} subnets, {pools} pools"
    );
}

/// Reloads the interface table and updates the lease and pool gauges and the pool usage.
/// The allocator is not rebuilt here: a pass over a large pool under the locks would stall
/// the receive path, and the allocator confirms every candidate with the index and rebuilds
/// itself when a pool looks full, which is the only time stale "taken" bits matter.
fn refresh(sh: &Shared, now_ms: u64) {
    *sh.ifaces.write().unwrap_or_else(|e| e.into_inner()) = Interfaces::load();
    let st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
    let ix = sh.store.index();
    let now_s = now_ms / 1000;
    let active = ix.active_count(now_s);
    let offered: Vec<_> = st.offered().collect();
    let usage = pools::usage(&st.plan, &ix, &offered, now_s);
    drop(ix);
    drop(st);
    sh.metrics.leases_active.set(active as i64);
    let mut board = sh.pools.write().unwrap_or_else(|e| e.into_inner());
    pools::export(&usage, &board, &sh.metrics.pool_addresses);
    let mut by_subnet: Vec<(&str, u64, u64)> = Vec::new();
    for p in &usage {
        match by_subnet.iter_mut().find(|(s, _, _)| *s == p.subnet) {
            Some((_, size, used)) => {
                *size += p.size;
                *used += p.active;
            }
            None => by_subnet.push((&p.subnet, p.size, p.active)),
        }
    }
    for (name, size, used) in by_subnet {
        let label = SubnetLabel {
            subnet: name.to_string(),
        };
        sh.metrics.pool_size.get_or_create(&label).set(size as i64);
        sh.metrics
            .pool_utilization
            .get_or_create(&label)
            .set(if size == 0 {
                0.0
            } else {
                used as f64 / size as f64
            });
    }
    *board = usage;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply that meets a full send buffer waits for room, not for an EPOLLOUT the socket
    /// (registered for reads only) never delivers, and leaves once the peer reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_into_a_full_buffer_waits_for_room_and_then_leaves() {
        use std::os::unix::net::UnixDatagram;
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        let mut queued = 0u32;
        while a.send(&queued.to_be_bytes()).is_ok() {
            queued += 1;
        }
        // SAFETY: the AsyncFd owns `a`, which nothing else closes.
        let a = Arc::new(unsafe {
            AsyncFd::register_with_interest(a, Interest::READABLE).expect("register")
        });
        let sender = a.clone();
        let last = queued.to_be_bytes();
        let waiting = tokio::spawn(async move {
            send_waiting(&sender, || sender.get_ref().send(&last).map(|_| ())).await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "sent into a full buffer?");
        // The peer reads what was queued: room again (a socket pair's sender counts its
        // queued datagrams against its own buffer until they are read).
        b.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 4];
        let mut seen = Vec::new();
        while b.recv(&mut buf).is_ok() {
            seen.push(u32::from_be_bytes(buf));
        }
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the reply did not leave once there was room")
            .expect("task");
        assert!(sent.is_ok(), "{sent:?}");
        // It left as soon as there was room: during the reads above, or after them.
        while b.recv(&mut buf).is_ok() {
            seen.push(u32::from_be_bytes(buf));
        }
        assert_eq!(seen, (0..=queued).collect::<Vec<_>>());
    }

    /// The real loop on loopback (no root): an INFORM from ciaddr 127.0.0.1 is answered to
    /// ciaddr:port+1 while ACTIVE, and only counted while STANDBY.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_only_while_active() {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe port");
            s.local_addr().expect("addr").port()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::config::parse(
            &format!(
                "[server]\ndhcp_port = {port}\nlease_db = \"{}\"\n[[subnet]]\nnetwork = \"127.0.0.0/8\"\nrouters = [\"127.0.0.1\"]\n[[subnet.pool]]\nrange_start = \"127.0.0.100\"\nrange_end = \"127.0.0.200\"\n",
                dir.path().join("l.redb").display()
            ),
            std::path::Path::new("t.toml"),
        )
        .expect("config");
        let client = tokio::net::UdpSocket::bind(("127.0.0.1", port + 1))
            .await
            .expect("client port");
        let (ha_tx, ha_rx) = watch::channel(HaState::Active);
        let metrics = DhcpMetrics::default();
        let pools = PoolBoard::default();
        let shutdown = CancellationToken::new();
        let (_updates_tx, updates) = watch::channel(Arc::new(cfg.clone()));
        let server = DhcpServer {
            sockets: crate::dhcp::sockets::open_sockets(&cfg).expect("sockets"),
            config: Arc::new(cfg),
            updates,
            store: LeaseStore::open(&dir.path().join("l.redb")).expect("store"),
            ha: ha_rx,
            serve_lease: ServeLease::always(),
            replication: None,
            bus: EventBus::new(),
            node: "t".into(),
            metrics: metrics.clone(),
            pools: pools.clone(),
            progress: crate::health::Health::new().worker("dhcp", Duration::from_secs(5)),
            shutdown: shutdown.clone(),
            conflicts: None,
            conflict_clears: None,
        };
        let task = tokio::spawn(server.run());
        let mut inform = vec![0u8; packet::HEADER_LEN];
        inform[0] = 1;
        inform[1] = 1;
        inform[2] = 6;
        inform[12..16].copy_from_slice(&[127, 0, 0, 1]);
        inform[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        inform.extend_from_slice(&packet::MAGIC);
        inform.extend_from_slice(&[53, 1, 8, 255]);
        let mut buf = [0u8; 1500];
        let mut answered = false;
        for _ in 0..50 {
            client
                .send_to(&inform, ("127.0.0.1", port))
                .await
                .expect("send");
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), client.recv_from(&mut buf)).await
            {
                assert!(n >= 300 && buf[0] == 2, "a BOOTREPLY");
                answered = true;
                break;
            }
        }
        assert!(answered, "no answer while ACTIVE");
        // The housekeeping's first pass (at start) filled the pool usage: an INFORM takes
        // no address, so all 101 are free.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let board = loop {
            let b = pools.read().expect("board").clone();
            if !b.is_empty() || std::time::Instant::now() > deadline {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(board.len(), 1, "{board:?}");
        assert_eq!((board[0].size, board[0].free), (101, 101), "{board:?}");
        ha_tx.send(HaState::Standby).expect("ha");
        for _ in 0..5 {
            client
                .send_to(&inform, ("127.0.0.1", port))
                .await
                .expect("send");
        }
        let got =
            tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await;
        assert!(got.is_err(), "a STANDBY node answered");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics
            .ignored
            .get_or_create(&ReasonLabel {
                reason: "not_active",
            })
            .get()
            < 5
        {
            assert!(
                std::time::Instant::now() < deadline,
                "not_active not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        let _ = task.await;
    }
}

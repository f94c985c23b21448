//! The I/O shell around [`super::decide::VipClaim`]: one worker task per configured VIP,
//! plus one task reading netlink address/link news and one reading ARP for the defence.
//!
//! A worker only executes: it feeds its VIP's core the newest role (as a want), netlink news
//! and results, ARP seen as the VIP and its timer, and carries out what the core answers
//! (netlink add/delete/check, gratuitous ARPs, logs, metrics, board, health, `vip.*`
//! events). The decisions and their invariants live in [`super::decide`]. It follows HA's
//! [`ServiceRole`] watch (latest value wins: nothing is dropped or reordered, and nobody
//! polls) and tells HA when a role's claim is done through [`VipClaims`] (a handoff is
//! acknowledged only then). Here:
//! - one VIP's netlink calls run one at a time, so its claims and releases are strictly
//!   ordered; a role that changes during a call reaches the core before the call's result;
//! - `held` on the [`VipBoard`] is true exactly while the address is on the interface by our
//!   doing (HA and the API rely on it);
//! - ARP frames that waited in the socket longer than [`STALE_FRAME`] (the process was
//!   stopped) are not conflicts;
//! - failures (interface missing, EPERM) are logged naming VIP, interface and capability,
//!   shown in health and on the board, published as `vip.error`, and retried with backoff;
//! - on shutdown a worker removes its VIP before it exits.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::arp::{self, ArpSeen};
use super::claim::Want;
use super::decide::{Input, Output, Report, VipClaim, VipSettings};
use super::netlink::{LinkInfo, NetEvent, Netlink, NetlinkError};
use super::packet::{self, PacketSockets};
use super::{VipBoard, VipStatus};
use crate::config::VipConfig;
use crate::events::{now_ms, Event, EventBus, EventData, EventKind, VipEvent};
use crate::ha::role::ServiceRole;
use crate::health::Health;
use crate::metrics::{described, register_all};

pub use super::decide::DEFEND_HOLDOFF;
/// An ARP frame read this long after the kernel received it was queued while the process
/// was stopped; it is not taken as a conflict (the resumed node would otherwise "defend" a
/// VIP its peer legitimately took over while it was frozen).
pub const STALE_FRAME: Duration = Duration::from_millis(300);

/// What the workers report to and through.
#[derive(Clone)]
pub struct VipContext {
    pub node: String,
    pub bus: EventBus,
    pub health: Health,
    pub board: VipBoard,
    pub shutdown: CancellationToken,
    pub metrics: VipMetrics,
    /// HA's decision (or the standalone daemon's fixed one); the workers follow it.
    pub role: watch::Receiver<ServiceRole>,
}

type Labels = Vec<(String, String)>;

/// VIP metrics, labelled by VIP address (registered under the daemon's `athena_` prefix).
#[derive(Clone)]
pub struct VipMetrics {
    pub held: Family<Labels, Gauge>,
    pub claims: Family<Labels, Counter>,
    pub releases: Family<Labels, Counter>,
    pub errors: Family<Labels, Counter>,
    pub conflicts: Family<Labels, Counter>,
    pub announcements: Family<Labels, Counter>,
    /// Event → first gratuitous ARP (or NA) of a claim.
    pub claim_latency: Histogram,
}

impl Default for VipMetrics {
    fn default() -> Self {
        VipMetrics {
            held: Family::default(),
            claims: Family::default(),
            releases: Family::default(),
            errors: Family::default(),
            conflicts: Family::default(),
            announcements: Family::default(),
            // 50 µs .. ~3 s
            claim_latency: Histogram::new(exponential_buckets(0.000_05, 3.0, 11)),
        }
    }
}

impl VipMetrics {
    pub fn register(registry: &mut Registry) -> VipMetrics {
        let m = VipMetrics::default();
        register_all(
            registry,
            [
                described(
                    "vip_held",
                    "1 while this node holds the VIP",
                    m.held.clone(),
                ),
                described(
                    "vip_claims",
                    "VIP claims (address added and announced)",
                    m.claims.clone(),
                ),
                described("vip_releases", "VIP releases", m.releases.clone()),
                described(
                    "vip_errors",
                    "Failed VIP claims or releases (each is retried)",
                    m.errors.clone(),
                ),
                described(
                    "vip_conflicts",
                    "ARP from another MAC claiming a held VIP",
                    m.conflicts.clone(),
                ),
                described(
                    "vip_announcements",
                    "Gratuitous ARPs / unsolicited NAs sent",
                    m.announcements.clone(),
                ),
                described(
                    "vip_claim_latency_seconds",
                    "From the event to the first announcement of a claim",
                    m.claim_latency.clone(),
                ),
            ],
        );
        m
    }
}

/// Per VIP (in config order), the role whose claim is done: `Some(role)` once the address
/// is on the interface and its first announcement went out for that role, `None` once it is
/// released (or a claim or release failed). HA waits on it before acknowledging a handoff.
type Claimed = Vec<Option<ServiceRole>>;

/// Tells HA when the VIPs are claimed for a role; cheap to clone. The default (no VIPs)
/// is claimed at once.
#[derive(Clone, Debug)]
pub struct VipClaims {
    rx: watch::Receiver<Claimed>,
    /// Woken when a held VIP is announced from another MAC (HA asks its peer then).
    rival: Arc<tokio::sync::Notify>,
}

impl Default for VipClaims {
    fn default() -> Self {
        VipClaims {
            rx: watch::channel(Vec::new()).1,
            rival: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl VipClaims {
    /// Returns when a held VIP was announced from another MAC (a conflict's first sight).
    pub async fn rival_seen(&self) {
        self.rival.notified().await
    }

    /// Waits until every VIP is claimed for `role` (or for a newer role that still serves),
    /// at most `limit`. True when they all are.
    pub async fn wait_claimed(&self, role: &ServiceRole, limit: Duration) -> bool {
        let mut rx = self.rx.clone();
        let done = |v: &Claimed| {
            v.iter()
                .all(|c| c.is_some_and(|c| c.serves() && (c == *role || c.since >= role.since)))
        };
        let claimed = tokio::time::timeout(limit, rx.wait_for(|v| done(v))).await;
        matches!(claimed, Ok(Ok(_)))
    }

    /// Waits until no VIP is claimed any more (each released, or its release failed), at
    /// most `limit`. True when none is.
    pub async fn wait_released(&self, limit: Duration) -> bool {
        let mut rx = self.rx.clone();
        let released =
            tokio::time::timeout(limit, rx.wait_for(|v| v.iter().all(Option::is_none))).await;
        matches!(released, Ok(Ok(_)))
    }
}

/// Starts the workers for `vips` on the current runtime; they stop (releasing their VIP)
/// when `ctx.shutdown` fires. Each worker first applies the role as it is then: a VIP left
/// over from a crash is removed unless the node already serves.
pub fn start(
    vips: &[VipConfig],
    sockets: PacketSockets,
    ctx: VipContext,
    tasks: &mut tokio::task::JoinSet<()>,
) -> std::io::Result<VipClaims> {
    let nl = Netlink::connect()?;
    let (net_tx, _) = broadcast::channel(256);
    super::netlink::spawn_monitor(net_tx.clone())?;
    let send = Arc::new(sockets.send);
    {
        let mut board = ctx.board.write().unwrap_or_else(|e| e.into_inner());
        board.clear();
        for v in vips {
            board.push(VipStatus {
                name: v.name.clone(),
                address: v.address.clone(),
                interface: v.interface.clone(),
                held: false,
                since: Some(now_ms()),
                last_error: None,
            });
        }
    }
    let (claims_tx, claims_rx) = watch::channel(vec![None; vips.len()]);
    let claims_tx = Arc::new(claims_tx);
    let rival = Arc::new(tokio::sync::Notify::new());
    let mut arp_routes = Vec::new();
    for (i, cfg) in vips.iter().enumerate() {
        let (conflict_tx, conflict_rx) = mpsc::channel(16);
        let net = cfg.net();
        if let IpAddr::V4(a) = net.addr() {
            arp_routes.push((a, conflict_tx));
        }
        let worker = Worker {
            cfg: cfg.clone(),
            net,
            board_index: i,
            nl: nl.clone(),
            send: send.clone(),
            role: ctx.role.clone(),
            applied: *ctx.role.borrow(),
            claims: claims_tx.clone(),
            rival: rival.clone(),
            ctx: ctx.clone(),
            core: VipClaim::new(
                VipSettings {
                    net,
                    interface: cfg.interface.clone(),
                    garp_count: cfg.garp_count,
                    garp_interval: cfg.garp_interval.get(),
                    garp_refresh: cfg.garp_refresh.map(|r| r.get()),
                },
                Instant::now(),
            ),
            announced: false,
            net_rx: net_tx.subscribe(),
            conflict_rx,
        };
        tasks.spawn(worker.run());
    }
    // SAFETY: the OwnedFd is a valid, non-blocking socket that the AsyncFd owns and that
    // nothing else closes or replaces.
    let rx = unsafe { AsyncFd::register(sockets.arp_rx)? };
    tokio::spawn(read_arp(rx, arp_routes, ctx.shutdown.clone()));
    Ok(VipClaims {
        rx: claims_rx,
        rival,
    })
}

/// A conflicting-looking ARP, with the interface it arrived on.
struct ArpOnLink {
    seen: ArpSeen,
    ifindex: u32,
}

/// Reads every ARP frame and hands those sent *as* a VIP to that VIP's worker. Malformed
/// frames are dropped (debug log); a full worker queue drops too (the worker is already
/// defending).
async fn read_arp(
    rx: AsyncFd<OwnedFd>,
    routes: Vec<(Ipv4Addr, mpsc::Sender<ArpOnLink>)>,
    shutdown: CancellationToken,
) {
    let mut buf = [0u8; 1600];
    let mut malformed: u64 = 0;
    loop {
        let mut guard = tokio::select! {
            _ = shutdown.cancelled() => return,
            g = rx.readable() => match g {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("ARP receive socket failed, conflict detection is off: {e}");
                    return;
                }
            },
        };
        loop {
            match packet::recv_frame(rx.get_ref(), &mut buf) {
                Ok(r) => {
                    if r.pkttype == libc::PACKET_OUTGOING {
                        continue;
                    }
                    let frame = &buf[..r.len.min(buf.len())];
                    match arp::parse_arp(frame) {
                        Ok(seen) => {
                            let age = r
                                .received
                                .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
                            if let Some(age) = age.filter(|a| *a > STALE_FRAME) {
                                // Queued while this process was not running: history (a peer
                                // taking over from a stopped node), not a live conflict.
                                tracing::debug!(
                                    age_ms = age.as_millis() as u64,
                                    "ignoring an ARP frame that waited {age:?} in the socket"
                                );
                                continue;
                            }
                            if let Some((_, tx)) = routes.iter().find(|(a, _)| *a == seen.sender_ip)
                            {
                                let _ = tx.try_send(ArpOnLink {
                                    seen,
                                    ifindex: r.ifindex,
                                });
                            }
                        }
                        Err(e) => {
                            malformed += 1;
                            tracing::debug!(malformed, "dropped ARP frame: {e}");
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    tracing::debug!("ARP receive: {e}");
                    guard.clear_ready();
                    break;
                }
            }
        }
    }
}

/// The I/O shell of one VIP: feeds [`VipClaim`] its inputs and carries out its outputs
/// (netlink, announcements, logs, metrics, board, health, events).
struct Worker {
    cfg: VipConfig,
    net: IpNet,
    board_index: usize,
    nl: Netlink,
    send: Arc<OwnedFd>,
    /// HA's role; the worker feeds each new value to the core as a want.
    role: watch::Receiver<ServiceRole>,
    /// The role last fed to the core (what a claim is reported for in [`VipClaims`]).
    applied: ServiceRole,
    claims: Arc<watch::Sender<Claimed>>,
    /// Tells HA a held VIP was announced from another MAC.
    rival: Arc<tokio::sync::Notify>,
    ctx: VipContext,
    core: VipClaim,
    /// Whether the last announcement went out (for the claim's log line).
    announced: bool,
    net_rx: broadcast::Receiver<NetEvent>,
    conflict_rx: mpsc::Receiver<ArpOnLink>,
}

impl Worker {
    async fn run(mut self) {
        let mut net_live = true;
        let mut role_live = true;
        // The role as it is now: the start-up clean-up, or the claim of a node that serves.
        self.take_role().await;
        loop {
            let deadline = self.core.poll_timeout();
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => break,
                changed = self.role.changed(), if role_live => match changed {
                    Ok(()) => self.take_role().await,
                    // HA is gone (the daemon is stopping): keep what we have until shutdown.
                    Err(_) => role_live = false,
                },
                ev = self.net_rx.recv(), if net_live => match ev {
                    Ok(ev) => self.feed(net_input(ev)).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(vip = %self.net, "missed {n} netlink events, re-checking");
                        self.feed(Input::Resync).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        // The monitor is gone: only `garp_refresh` checks remain.
                        tracing::warn!(vip = %self.net, "netlink monitor stopped; a removed floating IP is now only noticed by the garp_refresh check");
                        net_live = false;
                    }
                },
                Some(c) = self.conflict_rx.recv() => {
                    self.feed(Input::Arp { seen: c.seen, ifindex: c.ifindex }).await;
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.feed(Input::Timer).await,
            }
        }
        self.feed(Input::Shutdown).await;
    }

    /// The newest role, as the core's input.
    fn role_input(&mut self) -> Input {
        let role = *self.role.borrow_and_update();
        self.applied = role;
        Input::Want {
            want: Want::for_role(&role),
            at: role.since,
        }
    }

    async fn take_role(&mut self) {
        let input = self.role_input();
        self.feed(input).await;
    }

    /// Feeds one input and carries out what the core answers, netlink results included.
    async fn feed(&mut self, input: Input) {
        let mut todo: VecDeque<Output> = self.core.handle(input, Instant::now()).into();
        while let Some(out) = todo.pop_front() {
            let result = match out {
                Output::LookUpLink => {
                    let r = self.nl.link(&self.cfg.interface).await;
                    Input::LinkFound(r.map_err(|e| self.describe(&e)))
                }
                Output::AddAddress { index } => {
                    let r = self.nl.add(index, self.net).await;
                    Input::Added(r.map_err(|e| self.describe(&e)))
                }
                Output::DeleteAddress { index } => {
                    let r = self.nl.del(index, self.net).await;
                    Input::Deleted(r.map_err(|e| self.describe(&e)))
                }
                Output::CheckPresent { index } => {
                    let r = self.nl.present(index, self.net.addr()).await;
                    Input::Checked(r.map_err(|e| self.describe(&e)))
                }
                Output::Announce(link) => {
                    self.announced = self.announce(&link);
                    continue;
                }
                Output::Report(r) => {
                    self.report(r);
                    continue;
                }
            };
            // A role that changed during the netlink call goes first, so a claim it
            // supersedes announces nothing (the core defers it until the call is done).
            if self.role.has_changed().unwrap_or(false) {
                let want = self.role_input();
                todo.extend(self.core.handle(want, Instant::now()));
            }
            todo.extend(self.core.handle(result, Instant::now()));
        }
    }

    fn report(&mut self, r: Report) {
        match r {
            Report::Claimed { at, newly } => self.claimed(at, newly),
            Report::Released {
                was_held,
                existed,
                leftover,
                shutdown,
            } => self.released(was_held, existed, leftover, shutdown),
            Report::Failed {
                what,
                msg,
                retry_in,
                first,
                held,
            } => self.failed(what, msg, retry_in, first, held),
            Report::Succeeded { recovered } => {
                if recovered {
                    self.ctx
                        .health
                        .set_problem(&format!("vip {}", self.cfg.name), None);
                    tracing::info!(vip = %self.vip(), interface = %self.cfg.interface, "floating IP {} on {}: working again", self.vip(), self.cfg.interface);
                }
                self.update_board(|s| s.last_error = None);
            }
            Report::Carrier { up } => self.carrier(up),
            Report::LinkLost => {
                self.set_claimed(false);
                self.set_board(false);
                self.ctx.metrics.held.get_or_create(&self.labels()).set(0);
            }
            Report::Yielding => {
                tracing::debug!(vip = %self.vip(), "peer serves: no more announcements of {}, removing it in {:?}", self.vip(), super::claim::YIELD_LINGER);
            }
            Report::RemovedWhileHeld => {
                tracing::warn!(vip = %self.vip(), interface = %self.cfg.interface, "floating IP {} was removed from {} while held; adding it back", self.vip(), self.cfg.interface);
            }
            Report::LinkUp => {
                tracing::info!(vip = %self.vip(), interface = %self.cfg.interface, "link {} is up; claiming and announcing {} again", self.cfg.interface, self.vip());
            }
            Report::Vanished => {
                tracing::warn!(vip = %self.vip(), interface = %self.cfg.interface, "floating IP {} vanished from {}; adding it back", self.vip(), self.cfg.interface);
            }
            Report::CheckFailed(msg) => tracing::warn!("{msg}"),
            Report::Rival { rival } => {
                tracing::debug!(vip = %self.vip(), other_mac = %arp::mac_string(rival), "floating IP {} announced by {}; asking HA before defending", self.vip(), arp::mac_string(rival));
                self.rival.notify_one();
            }
            Report::Conflict { rival, own_mac } => self.report_conflict(rival, own_mac),
            Report::Defending => {
                tracing::warn!(vip = %self.vip(), interface = %self.cfg.interface, "defending floating IP {} on {}: announcing it again", self.vip(), self.cfg.interface);
            }
        }
    }

    fn vip(&self) -> String {
        self.net.to_string()
    }

    fn labels(&self) -> Labels {
        vec![("vip".to_string(), self.vip())]
    }

    /// Tells HA whether this VIP is claimed for the applied role.
    fn set_claimed(&self, claimed: bool) {
        let now = claimed.then_some(self.applied);
        self.claims
            .send_if_modified(|v| match v.get_mut(self.board_index) {
                Some(c) if *c != now => {
                    *c = now;
                    true
                }
                _ => false,
            });
    }

    /// A VIP link without carrier (cable pulled, switch port down) means this node cannot
    /// reach its clients: a health fault, so HA goes FAULT and the peer takes the service,
    /// as keepalived does when its interface goes down.
    fn carrier(&self, up: bool) {
        let key = format!("vip {}", self.cfg.name);
        if !up {
            let msg = format!(
                "link {} of floating IP {} is down (no carrier)",
                self.cfg.interface,
                self.vip()
            );
            tracing::warn!(vip = %self.vip(), interface = %self.cfg.interface, "{msg}: this node cannot serve its clients");
            self.ctx.health.set_fault(&key, Some(msg));
        } else {
            tracing::info!(vip = %self.vip(), interface = %self.cfg.interface, "link {} of floating IP {} is up again", self.cfg.interface, self.vip());
            self.ctx.health.set_fault(&key, None);
        }
    }

    fn describe(&self, e: &NetlinkError) -> String {
        if e.is_permission() {
            format!(
                "VIP {} on {}: {} (missing capability CAP_NET_ADMIN)",
                self.vip(),
                self.cfg.interface,
                e
            )
        } else {
            format!("VIP {} on {}: {}", self.vip(), self.cfg.interface, e)
        }
    }

    fn claimed(&mut self, at: Instant, newly: bool) {
        let first = Instant::now();
        let ms = first.saturating_duration_since(at).as_secs_f64() * 1000.0;
        let m = &self.ctx.metrics;
        m.claims.get_or_create(&self.labels()).inc();
        m.held.get_or_create(&self.labels()).set(1);
        m.claim_latency.observe(ms / 1000.0);
        if newly {
            self.set_board(true);
        }
        self.set_claimed(true);
        let mac = self
            .core
            .link()
            .map(|l| arp::mac_string(l.mac))
            .unwrap_or_default();
        let arps = if self.announced {
            self.cfg.garp_count
        } else {
            0
        };
        tracing::info!(
            vip = %self.vip(),
            interface = %self.cfg.interface,
            mac = %mac,
            garps = arps,
            duration_ms = ms,
            hook = %self.cfg.name,
            "claimed floating IP {} on {} ({} {}, {:.1} ms)",
            self.vip(),
            self.cfg.interface,
            arps,
            if self.net.addr().is_ipv6() {
                "unsolicited neighbour advertisements"
            } else {
                "gratuitous ARPs"
            },
            ms
        );
        self.publish(
            EventKind::VipClaimed,
            VipEvent {
                address: self.vip(),
                interface: self.cfg.interface.clone(),
                mac: Some(mac),
                arps,
                duration_ms: ms,
                detail: None,
                peer_ip: None,
            },
        );
    }

    fn released(&mut self, was_held: bool, existed: bool, leftover: bool, shutdown: bool) {
        // After the netlink call, so whoever waits on the claims sees the address gone.
        self.set_claimed(false);
        self.ctx.metrics.held.get_or_create(&self.labels()).set(0);
        if was_held {
            self.set_board(false);
        }
        if !(was_held || existed) {
            tracing::debug!(vip = %self.vip(), "floating IP {} not held, nothing to release", self.vip());
            return;
        }
        let why = if leftover {
            " (left over from an earlier run)"
        } else if shutdown {
            " (shutting down)"
        } else {
            ""
        };
        self.ctx
            .metrics
            .releases
            .get_or_create(&self.labels())
            .inc();
        tracing::info!(
            vip = %self.vip(),
            interface = %self.cfg.interface,
            hook = %self.cfg.name,
            "released floating IP {} from {}{}",
            self.vip(),
            self.cfg.interface,
            why
        );
        self.publish(
            EventKind::VipReleased,
            VipEvent {
                address: self.vip(),
                interface: self.cfg.interface.clone(),
                mac: self.core.link().map(|l| arp::mac_string(l.mac)),
                detail: (!why.is_empty()).then(|| why.trim().trim_matches(['(', ')']).to_string()),
                ..Default::default()
            },
        );
    }

    fn failed(&mut self, what: &str, msg: String, retry_in: Duration, first: bool, held: bool) {
        self.ctx.metrics.errors.get_or_create(&self.labels()).inc();
        if !held {
            self.ctx.metrics.held.get_or_create(&self.labels()).set(0);
            self.set_claimed(false);
        }
        if first {
            tracing::error!(
                vip = %self.vip(),
                interface = %self.cfg.interface,
                hook = %self.cfg.name,
                retry_in_ms = retry_in.as_millis() as u64,
                "{what} of floating IP failed: {msg}; retrying with backoff"
            );
            self.publish(
                EventKind::VipError,
                VipEvent {
                    address: self.vip(),
                    interface: self.cfg.interface.clone(),
                    detail: Some(msg.clone()),
                    ..Default::default()
                },
            );
        } else {
            tracing::debug!(vip = %self.vip(), "{what} failed again: {msg}");
        }
        self.ctx
            .health
            .set_problem(&format!("vip {}", self.cfg.name), Some(msg.clone()));
        self.update_board(|s| s.last_error = Some(msg));
    }

    /// Sends one announcement now; a failed send is logged, not fatal (the address is
    /// held; the next announcement or the link coming up tries again).
    /// One announcement of the VIP: a gratuitous ARP, or an unsolicited neighbour
    /// advertisement for an IPv6 VIP.
    fn announce(&mut self, link: &LinkInfo) -> bool {
        let (proto, dst, frame, what) = match self.net.addr() {
            IpAddr::V4(ip) => (
                arp::ETH_P_ARP,
                [0xff; 6],
                arp::garp_frame(link.mac, ip).to_vec(),
                "gratuitous ARP",
            ),
            IpAddr::V6(ip) => (
                super::ndp::ETH_P_IPV6,
                super::ndp::ALL_NODES_MAC,
                super::ndp::unsolicited_na(link.mac, ip).to_vec(),
                "neighbour advertisement",
            ),
        };
        match packet::send_frame(&self.send, link.index, proto, dst, &frame) {
            Ok(()) => {
                self.ctx
                    .metrics
                    .announcements
                    .get_or_create(&self.labels())
                    .inc();
                true
            }
            Err(e) => {
                tracing::warn!(vip = %self.vip(), interface = %self.cfg.interface, "{what} for {} on {} not sent: {e}", self.vip(), self.cfg.interface);
                false
            }
        }
    }

    /// Still held after [`DEFEND_HOLDOFF`]: a real conflict, not a peer taking over in a
    /// planned handoff (that one makes us release within the hold-off, silently).
    fn report_conflict(&mut self, rival: [u8; 6], own_mac: [u8; 6]) {
        let other = arp::mac_string(rival);
        self.ctx
            .metrics
            .conflicts
            .get_or_create(&self.labels())
            .inc();
        tracing::warn!(
            vip = %self.vip(),
            interface = %self.cfg.interface,
            other_mac = %other,
            "address conflict: {other} on {} claims floating IP {}, which this node holds",
            self.cfg.interface,
            self.vip()
        );
        self.publish(
            EventKind::VipConflict,
            VipEvent {
                address: self.vip(),
                interface: self.cfg.interface.clone(),
                mac: Some(arp::mac_string(own_mac)),
                detail: Some(other),
                ..Default::default()
            },
        );
    }

    fn set_board(&self, held: bool) {
        self.update_board(|s| {
            s.held = held;
            s.since = Some(now_ms());
        });
    }

    fn update_board(&self, f: impl FnOnce(&mut VipStatus)) {
        let mut b = self.ctx.board.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = b.get_mut(self.board_index) {
            f(s);
        }
    }

    fn publish(&self, kind: EventKind, ev: VipEvent) {
        self.ctx
            .bus
            .publish(Event::new(kind, self.ctx.node.clone(), EventData::Vip(ev)));
    }
}

/// Netlink news as the core's input.
fn net_input(ev: NetEvent) -> Input {
    match ev {
        NetEvent::AddressRemoved { index, addr } => Input::AddressRemoved { index, addr },
        NetEvent::Link(info) => Input::Link(info),
        NetEvent::LinkRemoved { index } => Input::LinkRemoved { index },
        NetEvent::Resync => Input::Resync,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

//! The HA node: the one task that owns the [`Machine`], feeds it inputs with the monotonic
//! clock, and carries out its actions — frames on the peer link, events on the bus, the
//! serving gate for DHCP, witness probes, bulk syncs, the shutdown handoff.
//!
//! Around it: the link tasks of [`crate::ha::link`] (dialling, accepting, the hello and the
//! tie-break between two links) and one lease applier per link. The heartbeat tick runs on
//! the same runtime as the workers and first asks [`Health::cannot_serve`], so a wedged node
//! (stuck workers) or one that cannot reach its clients (the VIP's link has no carrier)
//! stops heartbeating and goes FAULT.
//!
//! This file holds the task loop and the carrying out of actions; its glue for each concern
//! is beside it: `peer_link` (the current peer link and its frames), `datagram` (heartbeat
//! datagrams), `replicate` (lease frames and bulk sync), `serve` (serve lease and fencing),
//! `status` (events and the status), `config` (config agreement).
//!
//! Invariants: only this task calls `Machine::step`; every `ha.failover` action updates the
//! serving gate, the service role (which the VIP follows) and the status in the same step,
//! before the event goes on the bus; a link is either the current one or being
//! closed.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigDigest, SharedConfig};
use crate::events::{EventBus, EventKind};
use crate::ha::agreement::{Agreement, AgreementView};
use crate::ha::heartbeat::Heartbeat;
use crate::ha::link::{dialer, LinkReady, Shared, MAX_PENDING_HANDSHAKES};
use crate::ha::machine::{Action, Control, Input, Machine, MachineConfig, PeerStatus, StoreInput};
use crate::ha::metrics::HaMetrics;
use crate::ha::peer::{LinkError, Msg};
use crate::ha::role::{ServeLease, ServiceRole};
use crate::ha::sync::{Applied, ApplyJob, Pending};
use crate::ha::udp;
use crate::ha::witness::{self, WitnessTarget};
use crate::ha::{HaState, HaStatus, HaTransition, TRANSITION_HISTORY};
use crate::health::{mono_ms, Health};
use crate::lease::{LeaseLog, ReplicationRx};
use crate::vip::VipClaims;

/// Everything the node needs from the daemon.
pub struct HaParams {
    pub node: String,
    pub config: Arc<Config>,
    pub bus: EventBus,
    pub health: Health,
    /// Written on every `ha.failover` (transition or re-announce); the VIP manager follows it.
    pub role: watch::Sender<ServiceRole>,
    /// When the VIPs are claimed for a role: a handoff is acknowledged only then.
    pub vip_claims: VipClaims,
    /// The lease store; `None` until one exists (replication then acknowledges nothing).
    pub lease_log: Option<Arc<dyn LeaseLog>>,
    pub replication: Option<ReplicationRx>,
    /// Reloaded configs (SIGHUP): the shared-config digest follows, and goes to the peer.
    pub updates: watch::Receiver<Arc<Config>>,
    /// The DNS server's warm-standby ends (`dns::warm`), when DNS runs: the link carries
    /// the active node's cached questions to the standby, after the leases.
    pub dns_warm: Option<crate::dns::WarmLink>,
    /// The lease database was started empty in place of a damaged file: this marker file
    /// says so (across restarts) until a bulk sync from the peer completes.
    pub resync_marker: Option<std::path::PathBuf>,
    pub shutdown: CancellationToken,
}

/// What the link tasks and the handle tell the node task.
pub(super) enum NodeMsg {
    Input(Input),
    /// A heartbeat datagram that passed every check, from path `path`.
    Datagram {
        path: usize,
        beat: Heartbeat,
    },
    Link(LinkReady),
    LinkMsg {
        id: u64,
        msg: Msg,
    },
    LinkClosed {
        id: u64,
        err: Option<LinkError>,
    },
    Applied {
        id: u64,
        applied: Applied,
    },
    Failover(oneshot::Sender<Result<(), String>>),
    Shutdown(oneshot::Sender<()>),
}

struct CurrentLink {
    id: u64,
    dialer: String,
    dial: u64,
    addr: SocketAddr,
    tx: mpsc::Sender<Msg>,
    cancel: CancellationToken,
    applier: mpsc::UnboundedSender<ApplyJob>,
    /// The peer speaks config agreement (its hello carried a digest).
    agrees: bool,
    /// Leases received in this link's bulk sync (for the event).
    synced: usize,
    changed: usize,
}

/// The daemon's and the API's handle on the node. Cheap to clone.
#[derive(Clone)]
pub struct HaHandle {
    pub(super) tx: mpsc::Sender<NodeMsg>,
    /// What `/api/v1/ha/status` shows.
    pub status: watch::Receiver<HaStatus>,
    /// The serving gate: DHCP serves while this says ACTIVE.
    pub serving: watch::Receiver<HaState>,
    /// Do both nodes serve one config? (`/api/v1/ha/config`)
    pub config: watch::Receiver<AgreementView>,
    /// Renewed by every step of this node while it serves unfenced; DHCP answers only while
    /// it holds (see [`ServeLease`]).
    pub serve_lease: ServeLease,
    pub(super) inner: Arc<Shared>,
}

/// Starts the node. Returns its handle; the task stops when `params.shutdown` fires (after
/// [`HaHandle::shutdown`] has handed the service off).
pub fn spawn(params: HaParams, registry: &mut Registry) -> HaHandle {
    let cfg = params.config.clone();
    let ha = &cfg.ha;
    let witness_target = witness_target(&cfg);
    // This incarnation: wall-clock microseconds, so a restarted node's statuses and
    // heartbeats sort after its previous life's.
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let dpaths = udp::paths(&cfg);
    let mcfg = MachineConfig::from_config(
        &params.node,
        ha,
        witness_target.is_some(),
        boot,
        dpaths.iter().map(|p| p.name.clone()).collect(),
    );
    let now = mono_ms();
    let mut machine = Machine::new(mcfg, now);
    let saved_epoch = params.lease_log.as_ref().map_or(0, |l| l.saved_epoch());
    machine.restore_epoch(saved_epoch);
    if params.resync_marker.is_some() {
        machine.step(Input::Store(StoreInput::NeedsResync), now, 0);
    }
    let watermark = params.lease_log.as_ref().map_or(0, |l| l.watermark());
    let (status_tx, status_rx) = watch::channel(HaStatus {
        enabled: true,
        node: params.node.clone(),
        role: ha.role.to_string(),
        state: HaState::Standby,
        peer_connected: false,
        peer_state: None,
        last_heartbeat: None,
        epoch: saved_epoch,
        lease_watermark: watermark,
        peer_lease_watermark: None,
        vips: Vec::new(),
        peer_node: None,
        peer_epoch: None,
        peer_address: ha.peer_socket_addr().map(|a| a.to_string()),
        transitions: Vec::new(),
        fenced: false,
        paths: Vec::new(),
    });
    let (serving_tx, serving_rx) = watch::channel(HaState::Standby);
    let (my_tx, my_rx) = watch::channel(machine.status(watermark));
    let (link_up_tx, link_up_rx) = watch::channel(false);
    // At start-up the datagrams come before the link: a failover timeout without one
    // before the digests alone are reported.
    let grace = (ha.failover_timeout.0.as_millis() / ha.heartbeat_interval.0.as_millis().max(1))
        .clamp(2, 600) as u32;
    let agreement = Agreement::new(SharedConfig::of(&cfg), grace);
    let (digest_tx, digest_rx) = watch::channel(agreement.digest().clone());
    let (view_tx, view_rx) = watch::channel(agreement.view());
    let (tx, rx) = mpsc::channel(4096);
    let metrics = Arc::new(HaMetrics::default());
    metrics.register(registry);
    metrics.set_state(HaState::Standby);
    let inner = Arc::new(Shared {
        node: params.node.clone(),
        role: ha.role,
        secret: ha.shared_secret.clone().unwrap_or_default().into_bytes(),
        my_status: my_rx,
        config_digest: digest_rx,
        next_link: AtomicU64::new(1),
        last_dial: AtomicU64::new(0),
        metrics: metrics.clone(),
        handshakes: Semaphore::new(MAX_PENDING_HANDSHAKES),
        api_token: cfg.api.auth_token.clone(),
        warned: Mutex::new(HashMap::new()),
        dns_warm: params.dns_warm.clone(),
    });
    let serve_lease = ServeLease::revoked();
    let datagrams = udp::start(
        &cfg,
        boot,
        dpaths,
        tx.clone(),
        metrics.clone(),
        params.shutdown.clone(),
    );
    let handle = HaHandle {
        serve_lease: serve_lease.clone(),
        tx: tx.clone(),
        status: status_rx,
        serving: serving_rx,
        config: view_rx,
        inner: inner.clone(),
    };
    tracing::info!(
        node = %params.node,
        role = %ha.role,
        peer = ha.peer_address.as_deref().unwrap_or(""),
        witness = %witness_target.map(|w| w.to_string()).unwrap_or_else(|| "none".into()),
        "HA {} {}: heartbeat {}, failover after {}, peer {}, VIP witness {}",
        ha.role,
        params.node,
        ha.heartbeat_interval,
        ha.failover_timeout,
        ha.peer_address.as_deref().unwrap_or("?"),
        witness_target.map(|w| w.to_string()).unwrap_or_else(|| "none (no VIP configured)".into())
    );
    if let Some(peer_addr) = ha.peer_socket_addr() {
        tokio::spawn(dialer(
            handle.clone(),
            peer_addr,
            link_up_rx,
            ha.heartbeat_interval.0,
            params.shutdown.clone(),
        ));
    }
    let node = NodeTask {
        m: machine,
        p: params,
        inner,
        metrics,
        rx,
        tx,
        status_tx,
        serving_tx,
        my_tx,
        link_up_tx,
        link: None,
        pending: Pending::default(),
        peer_synced: 0,
        failover_waiters: Vec::new(),
        shutdown_waiters: Vec::new(),
        witness_target,
        witness_timeout: ha.witness_timeout(),
        heartbeat: ha.heartbeat_interval.0,
        last_heartbeat_unix: None,
        agreement,
        digest_tx,
        view_tx,
        saved_epoch,
        history: VecDeque::with_capacity(TRANSITION_HISTORY),
        datagrams,
        datagram_digest: (0, 0),
        serve_lease,
        store_failed: None,
    };
    tokio::spawn(node.run());
    handle
}

/// The VIP to ask: the first `[[hooks.vip]]` address, over DNS when DNS is on.
fn witness_target(cfg: &Config) -> Option<WitnessTarget> {
    let vip = cfg.hooks.vips.first()?;
    let ip: IpAddr = vip.address.split('/').next()?.parse().ok()?;
    if cfg.dns.enabled {
        Some(WitnessTarget::Dns(SocketAddr::new(
            ip,
            cfg.dns.listen_udp.port(),
        )))
    } else {
        Some(WitnessTarget::Tcp(SocketAddr::new(
            ip,
            cfg.ha.listen_address.port(),
        )))
    }
}

struct NodeTask {
    m: Machine,
    p: HaParams,
    inner: Arc<Shared>,
    metrics: Arc<HaMetrics>,
    rx: mpsc::Receiver<NodeMsg>,
    tx: mpsc::Sender<NodeMsg>,
    status_tx: watch::Sender<HaStatus>,
    serving_tx: watch::Sender<HaState>,
    my_tx: watch::Sender<PeerStatus>,
    link_up_tx: watch::Sender<bool>,
    link: Option<CurrentLink>,
    pending: Pending,
    /// Highest peer change sequence merged here (the `since` of the next bulk sync).
    peer_synced: u64,
    failover_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    witness_target: Option<WitnessTarget>,
    witness_timeout: Duration,
    heartbeat: Duration,
    last_heartbeat_unix: Option<u64>,
    /// Config agreement with the peer (see `node/config.rs`).
    agreement: Agreement,
    digest_tx: watch::Sender<ConfigDigest>,
    view_tx: watch::Sender<AgreementView>,
    /// The highest epoch handed to the store to save (see [`NodeTask::save_epoch`]).
    saved_epoch: u64,
    /// The latest state changes, for the status (bounded: a flapping node cannot grow it).
    history: VecDeque<HaTransition>,
    /// The datagram paths' sender (`None`: the link alone carries heartbeats).
    datagrams: Option<udp::DatagramSender>,
    /// The (boot, seq) of the newest datagram whose config digest was taken (see
    /// `node/datagram.rs`).
    datagram_digest: (u64, u64),
    serve_lease: ServeLease,
    /// The store's failure as last told to the machine.
    store_failed: Option<String>,
}

impl NodeTask {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut replication = self.p.replication.take();
        let mut updates = self.p.updates.clone();
        updates.mark_unchanged();
        loop {
            // Decisions due between heartbeats (the witness, the failover timeout) are taken
            // on time, not up to a heartbeat late.
            let now = mono_ms();
            let deadline = self
                .m
                .poll_timeout()
                .filter(|d| *d > now)
                .map(|d| tokio::time::Instant::now() + Duration::from_millis(d - now));
            tokio::select! {
                biased;
                msg = self.rx.recv() => match msg {
                    Some(m) => self.on_msg(m),
                    None => return,
                },
                req = async {
                    match replication.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => match req {
                    Some(req) => {
                        if let Some(r) = replication.as_mut() {
                            let batch = replicate::gather(req, r).await;
                            self.on_replicate(batch);
                        }
                    }
                    None => replication = None,
                },
                Ok(()) = updates.changed() => {
                    let cfg = updates.borrow_and_update().clone();
                    self.on_config_reload(&cfg);
                }
                _ = tick.tick() => self.on_tick(),
                _ = self.p.vip_claims.rival_seen() => self.step(Input::VipConflict),
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => self.step(Input::Tick),
                _ = self.p.shutdown.cancelled(), if self.shutdown_waiters.is_empty() => {
                    if let Some(l) = self.link.take() {
                        l.cancel.cancel();
                    }
                    return;
                }
            }
        }
    }

    fn watermark(&self) -> u64 {
        self.p.lease_log.as_ref().map_or(0, |l| l.watermark())
    }

    fn step(&mut self, input: Input) {
        let wm = self.watermark();
        let now = mono_ms();
        let actions = self.m.step(input, now, wm);
        // Before any action: a fence revokes DHCP's lease at once, a takeover finds it valid.
        self.renew_serve_lease(now);
        // The status first: whoever an action wakes (shutdown, the API) sees the new state.
        self.record_transitions(&actions);
        self.publish_status();
        for a in actions {
            self.act(a);
        }
        self.publish_status();
        self.save_epoch();
    }

    /// A new epoch (a takeover) is saved with the leases, off the runtime: a restarted node
    /// resumes from it. Not awaited: the takeover must not wait for a disk, and a crash before
    /// the write leaves the previous epoch, which the peer's higher one corrects.
    fn save_epoch(&mut self) {
        let e = self.m.epoch();
        if e <= self.saved_epoch {
            return;
        }
        self.saved_epoch = e;
        if let Some(log) = self.p.lease_log.clone() {
            tokio::task::spawn_blocking(move || {
                if let Err(err) = log.save_epoch(e) {
                    tracing::warn!(epoch = e, "{err}");
                }
            });
        }
    }

    fn on_tick(&mut self) {
        self.on_config_heartbeat();
        let now = mono_ms();
        for p in self.m.paths(now) {
            self.metrics
                .path_age(&p.name, p.last_frame_ms_ago.map_or(-1, |a| a as i64));
        }
        let store = self.p.lease_log.as_ref().and_then(|l| l.failure());
        if store != self.store_failed {
            self.store_failed = store.clone();
            self.step(Input::Store(match store {
                Some(why) => StoreInput::Failed(why),
                None => StoreInput::Healed,
            }));
        }
        let stuck = self.p.health.cannot_serve();
        self.step(Input::Health { stuck });
        self.step(Input::Tick);
        self.pending.prune();
        self.metrics.sync_lag_frames.set(self.pending.len() as i64);
        self.metrics
            .sync_lag_ms
            .set((self.pending.oldest_secs() * 1000.0) as i64);
    }

    fn on_msg(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::Input(i) => self.step(i),
            NodeMsg::Datagram { path, beat } => self.on_datagram(path, beat),
            NodeMsg::Link(l) => self.on_link(l),
            NodeMsg::LinkClosed { id, err } => self.on_link_closed(id, err),
            NodeMsg::LinkMsg { id, msg } => {
                if self.link.as_ref().is_none_or(|l| l.id != id) {
                    return;
                }
                self.on_frame(msg);
            }
            NodeMsg::Applied { id, applied } => self.on_applied(id, applied),
            NodeMsg::Failover(reply) => {
                self.failover_waiters.push(reply);
                self.step(Input::ApiFailover);
                // A handoff started: answer once it ends (ack, refusal or timeout).
                if !self.m.handoff_pending() {
                    self.answer_failover(Err("handoff did not start".into()));
                }
            }
            NodeMsg::Shutdown(done) => {
                self.shutdown_waiters.push(done);
                self.step(Input::Shutdown);
            }
        }
    }

    fn answer_failover(&mut self, r: Result<(), String>) {
        for w in self.failover_waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Send(c) => {
                if let (Control::Status(s), Some(d)) = (&c, self.datagrams.as_mut()) {
                    d.send(s, self.agreement.digest());
                }
                let Some(l) = &self.link else { return };
                if matches!(c, Control::Status(_)) {
                    self.metrics.heartbeats_sent.inc();
                }
                if let Control::HandoffAck { accepted: true, .. } = c {
                    // The old owner releases the VIP when it reads the ack: claim it first,
                    // so no query finds the VIP on nobody.
                    let tx = l.tx.clone();
                    let claims = self.p.vip_claims.clone();
                    let role = *self.p.role.borrow();
                    tokio::spawn(async move {
                        claims.wait_claimed(&role, Duration::from_secs(1)).await;
                        let _ = tx.send(Msg::Control(c)).await;
                    });
                    return;
                }
                if l.tx.try_send(Msg::Control(c)).is_err() {
                    tracing::debug!("peer link queue full; frame dropped");
                }
            }
            Action::Transition { old, new, reason } => {
                self.emit(EventKind::HaFailover, old, new, reason)
            }
            // Hooks (and today the VIP route) see a re-announcement as ha.failover ACTIVE ->
            // ACTIVE, as before; the machine's decision is the variant, not that shape.
            Action::Reannounce { reason } => {
                let st = self.m.state();
                self.emit(EventKind::HaFailover, st, st, reason)
            }
            Action::Notify { notice, reason } => {
                let st = self.m.state();
                self.emit(notice.kind(), st, st, reason)
            }
            Action::ProbeWitness => match self.witness_target {
                Some(target) => {
                    let tx = self.tx.clone();
                    let limit = self.witness_timeout;
                    tokio::spawn(async move {
                        let answered = witness::probe(target, limit).await;
                        tracing::debug!(%target, answered, "VIP witness at {target}: {}", if answered { "answered" } else { "no answer" });
                        let _ = tx.send(NodeMsg::Input(Input::Witness { answered })).await;
                    });
                }
                None => {
                    let _ = self
                        .tx
                        .try_send(NodeMsg::Input(Input::Witness { answered: false }));
                }
            },
            Action::StartSync => {
                if let Some(l) = &self.link {
                    let _ = l.tx.try_send(Msg::SyncRequest {
                        since: self.peer_synced,
                    });
                }
            }
            Action::CloseLink => {
                if let Some(l) = self.link.take() {
                    tracing::info!(peer = %l.addr, "closing the silent peer link to {}", l.addr);
                    l.cancel.cancel();
                    self.pending.fail_all();
                    self.agreement.link_down();
                    let _ = self.link_up_tx.send(false);
                }
            }
            Action::ShutdownReady => {
                for w in self.shutdown_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            Action::HandoffEnded(r) => {
                if let Err(e) = &r {
                    tracing::info!("{e}; this node is {}", self.m.state());
                }
                self.answer_failover(r.map_err(|e| e.to_string()));
            }
            Action::Refused(r) => self.answer_failover(Err(r)),
            Action::Log(n) => tracing::info!("{n}"),
            Action::Fence { on, reason } => self.fence(on, reason),
        }
    }
}

impl HaHandle {
    /// `POST /api/v1/ha/failover`: hand the service to the peer; waits for the outcome.
    pub async fn failover(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(NodeMsg::Failover(tx))
            .await
            .map_err(|_| "HA is not running".to_string())?;
        rx.await.unwrap_or_else(|_| Err("HA stopped".into()))
    }

    /// SIGTERM: hands off to a connected standby and waits (bounded) until it took over, or
    /// returns at once when there is nobody to hand off to.
    pub async fn shutdown(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(NodeMsg::Shutdown(tx)).await.is_err() {
            return;
        }
        if tokio::time::timeout(limit, rx).await.is_err() {
            tracing::warn!("handoff did not finish within {limit:?}; exiting anyway");
        }
    }

    pub fn metrics(&self) -> &HaMetrics {
        &self.inner.metrics
    }

    /// The API token `POST /api/v1/ha/failover` is checked against.
    pub(crate) fn api_token(&self) -> Option<&str> {
        self.inner.api_token.as_deref()
    }
}

mod config;
mod datagram;
mod peer_link;
mod replicate;
mod serve;
mod status;
#[cfg(test)]
mod tests;

//! The HA node: the one task that owns the [`Machine`], feeds it inputs with the monotonic
//! clock, and carries out its actions — frames on the peer link, events on the bus, the
//! serving gate for DHCP, witness probes, bulk syncs, the shutdown handoff.
//!
//! Around it: the link tasks of [`crate::ha::link`] (dialling, accepting, the hello and the
//! tie-break between two links) and one lease applier per link. The heartbeat tick runs on the same runtime as the workers and
//! first asks [`Health::cannot_serve`], so a wedged node (stuck workers) or one that cannot
//! reach its clients (the VIP's link has no carrier) stops heartbeating and goes FAULT.
//!
//! Invariants: only this task calls `Machine::step`; every `ha.failover` action updates the
//! serving gate, the service role (which the VIP follows) and the status in the same step,
//! before the event goes on the bus; a link is either the current one or being
//! closed.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigDigest, SharedConfig};
use crate::events::{Event, EventBus, EventData, EventKind, HaEvent};
use crate::ha::agreement::{Agreement, AgreementView};
use crate::ha::link::{
    dialer, preferred_dialer, replaces, retire, LinkReady, Shared, MAX_PENDING_HANDSHAKES,
};
use crate::ha::machine::{Action, Control, Input, Machine, MachineConfig, PeerStatus, StoreInput};
use crate::ha::metrics::HaMetrics;
use crate::ha::peer::{LinkError, Msg};
use crate::ha::role::{ServeLease, ServiceRole};
use crate::ha::sync::{self, Applied, ApplyJob, Pending};
use crate::ha::udp;
use crate::ha::witness::{self, WitnessTarget};
use crate::ha::{HaState, HaStatus, HaTransition, TRANSITION_HISTORY};
use crate::health::{mono_ms, Health};
use crate::lease::{LeaseLog, ReplicationRx};
use crate::vip::VipClaims;

/// Most yields while gathering one frame's leases (each lets the woken DHCP tasks run).
const GATHER_ROUNDS: usize = 8;

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
    Link(LinkReady),
    LinkMsg { id: u64, msg: Msg },
    LinkClosed { id: u64, err: Option<LinkError> },
    Applied { id: u64, applied: Applied },
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
    let agreement = Agreement::new(SharedConfig::of(&cfg));
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
                        // The ACKs of one group commit wake together: let the others queue
                        // their leases too, so they ride in the same frame (one frame, one
                        // merge and one fsync on the standby for the burst). One yield let
                        // only about half of a 40-lease commit through; yield until a round
                        // brings nothing new.
                        let mut batch = vec![req];
                        let mut n = batch[0].leases.len();
                        let mut rounds = 0;
                        'gather: while n < sync::LIVE_BATCH && rounds < GATHER_ROUNDS {
                            rounds += 1;
                            tokio::task::yield_now().await;
                            let before = batch.len();
                            while n < sync::LIVE_BATCH {
                                match replication.as_mut().map(|r| r.try_recv()) {
                                    Some(Ok(more)) => {
                                        n += more.leases.len();
                                        batch.push(more);
                                    }
                                    _ => break,
                                }
                            }
                            if batch.len() == before {
                                break 'gather;
                            }
                        }
                        self.on_replicate(batch);
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
        // It runs out a heartbeat before the peer could take over from a silent node.
        if self.m.state().serves() && !self.m.fenced() {
            self.serve_lease
                .renew(now + self.m.config().serve_lease_ms());
        } else {
            self.serve_lease.revoke();
        }
        // The status first: whoever an action wakes (shutdown, the API) sees the new state.
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
            NodeMsg::Link(l) => self.on_link(l),
            NodeMsg::LinkClosed { id, err } => {
                if self.link.as_ref().is_some_and(|l| l.id == id) {
                    let l = self.link.take();
                    if let (Some(l), Some(_)) = (l, err) {
                        l.cancel.cancel();
                    }
                    self.pending.fail_all();
                    self.agreement.link_down();
                    let _ = self.link_up_tx.send(false);
                    self.step(Input::LinkDown);
                }
            }
            NodeMsg::LinkMsg { id, msg } => {
                if self.link.as_ref().is_none_or(|l| l.id != id) {
                    return;
                }
                self.on_frame(msg);
            }
            NodeMsg::Applied { id, applied } => {
                let Some(l) = self.link.as_mut().filter(|l| l.id == id) else {
                    return;
                };
                match applied {
                    Applied::Batch {
                        upto,
                        received,
                        changed,
                        done,
                    } => {
                        self.peer_synced = self.peer_synced.max(upto);
                        l.synced += received;
                        l.changed += changed;
                        if done {
                            if let Some(marker) = self.p.resync_marker.take() {
                                // The rebuilt database holds the peer's lease set now.
                                if let Err(e) = std::fs::remove_file(&marker) {
                                    tracing::warn!("cannot remove {}: {e}", marker.display());
                                }
                            }
                            let detail = format!(
                                "bulk sync from {} complete: {} leases received, {} changed here",
                                self.m.peer().map_or("peer", |p| p.node.as_str()),
                                l.synced,
                                l.changed
                            );
                            self.step(Input::SyncComplete { detail });
                        }
                    }
                    Applied::Failed(e) => {
                        tracing::error!("bulk sync: merging the peer's leases failed: {e}");
                    }
                }
            }
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

    fn on_frame(&mut self, msg: Msg) {
        match msg {
            Msg::Hello { .. } => {} // only valid as the first frame; handled by the link
            Msg::DnsWarm(_) => {}   // handled by the link's reader
            Msg::Control(c) => {
                if matches!(c, Control::Status(_)) {
                    self.metrics.heartbeats_received.inc();
                    self.last_heartbeat_unix = Some(crate::events::now_ms());
                }
                self.step(Input::Peer(c));
            }
            Msg::Leases { id, leases } => {
                if let Some(l) = &self.link {
                    let _ = l.applier.send(ApplyJob::Live { id, leases });
                }
            }
            Msg::LeasesAck { id } => {
                self.metrics.replicated.inc();
                self.pending.ack(id);
            }
            Msg::LeasesNack { id } => self.pending.nack(id),
            Msg::SyncRequest { since } => {
                if let Some(l) = &self.link {
                    sync::spawn_bulk_sender(self.p.lease_log.clone(), since, l.tx.clone());
                }
            }
            Msg::SyncBatch { changes, done } => {
                if let Some(l) = &self.link {
                    let _ = l.applier.send(ApplyJob::Bulk { changes, done });
                }
            }
            Msg::ConfigDigest(_) | Msg::ConfigRequest | Msg::ConfigEntries(_) => {
                self.on_config_frame(msg)
            }
        }
    }

    fn on_replicate(&mut self, batch: Vec<crate::lease::ReplicationRequest>) {
        let connected = self.link.is_some()
            && self
                .m
                .peer()
                .is_some_and(|p| matches!(p.state, HaState::Standby | HaState::Syncing));
        match &self.link {
            Some(l) if connected => {
                let mut leases = Vec::with_capacity(batch.len());
                let mut done = Vec::with_capacity(batch.len());
                for r in batch {
                    leases.extend(r.leases);
                    done.push(r.done);
                }
                let id = self.pending.add(done, leases.clone());
                if let Err(mpsc::error::TrySendError::Full(frame)) =
                    l.tx.try_send(Msg::Leases { id, leases })
                {
                    // The writer is behind: queue the frame behind it rather than drop it
                    // (the standby would miss these leases until the next bulk sync). The
                    // DHCPACKs keep waiting, bounded by max_ack_delay; the send ends when
                    // the link does.
                    let tx = l.tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(frame).await;
                    });
                }
            }
            _ => {
                // No peer to wait for: the lease is durable here and goes out in the next
                // bulk sync (a peer whose store failed takes it once its store heals).
                let how = if self.m.peer().is_some_and(|p| p.store_failed) {
                    crate::lease::Replicated::PeerStoreFailed
                } else {
                    crate::lease::Replicated::PeerDown
                };
                for r in batch {
                    let _ = r.done.send(how);
                }
            }
        }
    }

    fn on_link(&mut self, new: LinkReady) {
        if let Some(cur) = &self.link {
            let preferred = preferred_dialer(
                &self.inner.node,
                self.inner.role,
                &new.peer.node,
                new.peer.role,
            );
            let keep_new = replaces((&new.dialer, new.dial), (&cur.dialer, cur.dial), &preferred);
            let same_peer =
                self.m.link_up() && self.m.peer().is_some_and(|p| p.node == new.peer.node);
            if !keep_new {
                tracing::debug!(peer = %new.addr, "second peer link dialled by {} closed; keeping the one dialled by {}", new.dialer, cur.dialer);
                retire(new.cancel);
                return;
            }
            tracing::debug!(peer = %new.addr, "replacing the peer link dialled by {} with the one dialled by {}", cur.dialer, new.dialer);
            if let Some(old) = self.link.take() {
                if same_peer {
                    retire(old.cancel);
                } else {
                    old.cancel.cancel();
                }
            }
            if same_peer {
                // The tie-break can land after the pair settled (a dial slowed by load): the
                // peer never went away, so swap the transport under the machine instead of
                // a link-down/up that would abandon a handoff in flight and release the
                // DHCPACKs waiting for the standby. What was in flight goes again.
                let peer = new.peer.clone();
                self.install_link(new);
                if let Some(l) = &self.link {
                    for frame in self.pending.unacked() {
                        if l.tx.try_send(frame).is_err() {
                            break; // the ACKs' bounded wait covers the rest
                        }
                    }
                }
                self.step(Input::LinkSwapped(peer));
                return;
            }
            self.pending.fail_all();
            self.step(Input::LinkDown);
        }
        let peer = new.peer.clone();
        self.install_link(new);
        self.step(Input::LinkUp(peer));
    }

    /// Makes `new` the current link, with its own applier.
    fn install_link(&mut self, new: LinkReady) {
        let id = new.id;
        let tx = self.tx.clone();
        let applier =
            sync::spawn_applier(self.p.lease_log.clone(), new.tx.clone(), move |applied| {
                let _ = tx.try_send(NodeMsg::Applied { id, applied });
            });
        tracing::info!(
            peer = %new.addr,
            peer_node = %new.peer.node,
            peer_state = %new.peer.state,
            epoch = new.peer.epoch,
            "peer link to {} ({}) up: peer is {} with epoch {}, lease watermark {}",
            new.peer.node,
            new.addr,
            new.peer.state,
            new.peer.epoch,
            new.peer.watermark
        );
        let peer_config = new.peer_config.clone().map(|d| (new.peer.node.clone(), d));
        if new.peer.watermark < self.peer_synced {
            // The peer's lease log is younger than what we merged (a new database): start over.
            self.peer_synced = 0;
        }
        self.link = Some(CurrentLink {
            id,
            dialer: new.dialer,
            dial: new.dial,
            addr: new.addr,
            tx: new.tx,
            cancel: new.cancel,
            applier,
            agrees: peer_config.is_some(),
            synced: 0,
            changed: 0,
        });
        if let Some((node, digest)) = peer_config {
            // A new link (also one replacing a link to the same peer): what was asked on the
            // old one may be lost with it.
            self.agreement.link_down();
            self.on_peer_digest(&node, digest);
        }
        let _ = self.link_up_tx.send(true);
        self.last_heartbeat_unix = Some(crate::events::now_ms());
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Send(c) => {
                if let (Control::Status(s), Some(d)) = (&c, self.datagrams.as_mut()) {
                    d.send(s);
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
            Action::Fence { on, reason } => {
                // The VIP lets go (or claims again) through the role; DHCP through the
                // serve lease, which `step` revokes while fenced.
                let peer = self.m.peer().map(|p| p.state);
                self.p.role.send_modify(|r| {
                    r.fenced = on;
                    r.peer_state = if on { None } else { peer };
                    r.since = Instant::now();
                });
                if on {
                    tracing::warn!(event = "ha.fenced", reason = %reason, "HA fenced: {reason}");
                } else {
                    tracing::info!(event = "ha.unfenced", reason = %reason, "HA unfenced: {reason}");
                }
            }
        }
    }

    /// Logs and publishes one `ha.*` event; a `ha.failover` that changes the state also moves
    /// the serving gate and the metrics, and every `ha.failover` (a re-announce too) is first
    /// written to the service role the VIP follows.
    fn emit(&mut self, kind: EventKind, old: HaState, new: HaState, reason: String) {
        let peer = self.m.peer().map(|p| p.state);
        let peer_state = peer;
        if kind == EventKind::HaFailover {
            // The VIP's channel, before the event: the bus may drop for a slow subscriber,
            // the role never does (latest value wins).
            let epoch = self.m.epoch();
            self.p.role.send_modify(|r| {
                let reannounce = if old == new && new.serves() {
                    r.reannounce + 1
                } else {
                    r.reannounce
                };
                *r = ServiceRole {
                    state: new,
                    epoch,
                    peer_state: peer,
                    reannounce,
                    since: Instant::now(),
                    fenced: self.m.fenced(),
                };
            });
        }
        if kind == EventKind::HaFailover && old == new {
            tracing::info!(event = kind.as_str(), state = %new, reason = %reason, "HA stays {new}: {reason}");
        } else if kind == EventKind::HaFailover {
            self.metrics.transitions.inc();
            self.metrics.set_state(new);
            self.metrics.epoch.set(self.m.epoch() as i64);
            let _ = self.serving_tx.send(new);
            if self.history.len() == TRANSITION_HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(HaTransition {
                at: crate::events::now_ms(),
                from: old,
                to: new,
                epoch: self.m.epoch(),
                reason: reason.clone(),
            });
            tracing::info!(
                event = kind.as_str(),
                old_state = %old,
                new_state = %new,
                epoch = self.m.epoch(),
                reason = %reason,
                "HA {old} -> {new}: {reason}"
            );
        } else if kind == EventKind::HaSplitBrain {
            tracing::warn!(event = kind.as_str(), reason = %reason, "{kind}: {reason}");
        } else {
            tracing::info!(event = kind.as_str(), reason = %reason, "{kind}: {reason}");
        }
        self.p.bus.publish(Event::new(
            kind,
            self.p.node.clone(),
            EventData::Ha(HaEvent {
                old_state: old,
                new_state: new,
                reason,
                role: self.inner.role,
                peer_state,
                epoch: self.m.epoch(),
            }),
        ));
    }

    fn publish_status(&mut self) {
        let wm = self.watermark();
        let _ = self.my_tx.send(self.m.status(wm));
        let connected = self.link.is_some() && self.m.link_up();
        self.metrics.peer_connected.set(i64::from(connected));
        let st = HaStatus {
            enabled: true,
            node: self.p.node.clone(),
            role: self.inner.role.to_string(),
            state: self.m.state(),
            peer_connected: connected,
            peer_state: if connected {
                self.m.peer().map(|p| p.state)
            } else {
                None
            },
            last_heartbeat: self.last_heartbeat_unix,
            fenced: self.m.fenced(),
            paths: self.m.paths(mono_ms()),
            epoch: self.m.epoch(),
            lease_watermark: wm,
            peer_lease_watermark: self.m.peer().map(|p| p.watermark),
            vips: Vec::new(),
            peer_node: self.m.peer().map(|p| p.node.clone()),
            peer_epoch: self.m.peer().map(|p| p.epoch),
            peer_address: self.p.config.ha.peer_socket_addr().map(|a| a.to_string()),
            transitions: self.history.iter().cloned().collect(),
        };
        self.status_tx.send_if_modified(|old| {
            if *old != st {
                *old = st;
                true
            } else {
                false
            }
        });
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
#[cfg(test)]
mod tests;

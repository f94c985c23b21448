//! Starting the services in the one order that loses nothing, and stopping them.
//!
//! Order, and why: DNS first (its zone follows lease events from the start) → VIP workers and
//! hooks (they must see HA's first event; the VIP follows the role watch, which keeps the
//! latest value whatever starts first) → the lease store → HA, or the standalone role → DHCP
//! (it follows HA's serving gate) → the API (it needs every service's routes and metrics).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{notify_ready, spawn_watchdog, wait_for_signals, Prepared};
use crate::config::Config;
use crate::dns::DnsServer;
use crate::events::{Event, EventBus, EventData, EventKind, HaEvent};
use crate::ha::node::HaHandle;
use crate::ha::role::ServiceRole;
use crate::ha::{HaState, HaStatus};
use crate::health::Health;
use crate::lease::{LeaseLog, LeaseStore, ReplicationRx};
use crate::vip::{VipBoard, VipClaims};

/// What every service is started with; made once, before any of them.
pub(super) struct Common {
    pub(super) cfg: Arc<Config>,
    pub(super) node: String,
    pub(super) bus: EventBus,
    pub(super) health: Health,
    /// One broadcast stops every task but the hooks (they outlive the rest, see [`stop`]).
    pub(super) shutdown: CancellationToken,
    /// The running config; SIGHUP sends a new one (hooks and the reloadable DNS settings follow it).
    config: watch::Receiver<Arc<Config>>,
}

/// What the API and DHCP follow of HA; standalone, fixed values whose senders are kept alive
/// here (a dropped sender would end every `changed()` wait at once).
struct HaView {
    handle: Option<HaHandle>,
    status: watch::Receiver<HaStatus>,
    serving: watch::Receiver<HaState>,
    serve_lease: crate::ha::role::ServeLease,
    _standalone: Option<(watch::Sender<HaStatus>, watch::Sender<HaState>)>,
}

pub(super) async fn serve(mut prepared: Prepared) -> anyhow::Result<()> {
    let cfg = prepared.config.clone();
    let (config_tx, config) = watch::channel(cfg.clone());
    let c = Common {
        node: cfg.node_name(),
        cfg,
        bus: EventBus::new(),
        health: Health::new(),
        shutdown: CancellationToken::new(),
        config,
    };
    let mut registry = Registry::with_prefix("athena");
    let mut routes = axum::Router::new();
    let mut tasks = JoinSet::new();
    let vips: VipBoard = Default::default();
    // Who serves, for the VIP: written by HA (or once, standalone), read by the VIP workers.
    // Made before both, so neither start-up order can lose a value.
    let (role_tx, role_rx) = crate::ha::role::channel();

    let dns = match prepared.dns.take() {
        Some(sockets) => Some(start_dns(&c, sockets, &mut registry, &mut routes)?),
        None => None,
    };
    let vip_claims = match prepared.vip_sockets.take() {
        Some(sockets) => start_vips(&c, sockets, role_rx, &vips, &mut registry, &mut tasks)?,
        None => VipClaims::default(),
    };
    let hooks = crate::hooks::start(crate::hooks::HookContext {
        bus: c.bus.clone(),
        shutdown: CancellationToken::new(),
        metrics: crate::hooks::HookMetrics::register(&mut registry),
        config: c.config.clone(),
    });
    // The lease store, opened when DHCP serves: DHCP writes it, HA replicates it.
    let (store, resync_marker) = if prepared.dhcp_sockets.is_empty() {
        (None, None)
    } else {
        let (store, marker) = super::store::open_store(&c, &mut registry, &mut tasks)?;
        (Some(store), marker)
    };
    if let (Some(dns), Some(store), true) = (&dns, &store, c.cfg.dns.register_leases) {
        feed_zone(dns, store.clone());
    }
    // DHCP calls `replication.replicate` before each DHCPACK; HA owns the receiving end.
    let (replication, replication_rx) = crate::lease::replication_channel(1024);
    let ha = if c.cfg.ha.enabled {
        let log = store.clone().map(|s| s as Arc<dyn LeaseLog>);
        start_ha(
            &c,
            role_tx,
            vip_claims.clone(),
            log,
            replication_rx,
            dns.as_ref().map(|d| d.warm_link()),
            resync_marker,
            &mut registry,
            &mut routes,
        )
    } else {
        drop(replication_rx);
        serve_standalone(&c, role_tx)
    };
    if let Some(dns) = &dns {
        // Answers resolved for the peer reach clients only while this node serves.
        dns.follow_serving(ha.serving.clone());
    }
    if let Some(store) = store {
        // Standalone there is no peer to wait for.
        let replication = ha.handle.as_ref().map(|_| replication);
        start_dhcp(
            &c,
            &mut prepared,
            store,
            &ha,
            replication,
            &mut registry,
            &mut routes,
            &mut tasks,
        );
    }
    if let Some(listener) = prepared.api.take() {
        start_api(&c, listener, &ha, vips, registry, routes, &mut tasks)?;
    }

    tracing::info!(
        node = %c.node,
        version = env!("CARGO_PKG_VERSION"),
        ha = c.cfg.ha.enabled,
        "athena-dhcpd {} started on {} ({})",
        env!("CARGO_PKG_VERSION"),
        c.node,
        if c.cfg.ha.enabled { format!("HA {}", c.cfg.ha.role) } else { "standalone".to_string() }
    );
    notify_ready();
    spawn_watchdog(c.health.clone(), c.shutdown.clone());

    wait_for_signals(&prepared.config_path, &config_tx, &c.shutdown).await;
    stop(&c, ha.handle.as_ref(), &vip_claims, tasks, hooks).await;
    Ok(())
}

fn start_dns(
    c: &Common,
    sockets: crate::dns::DnsSockets,
    registry: &mut Registry,
    routes: &mut axum::Router,
) -> anyhow::Result<DnsServer> {
    let dns = DnsServer::start(
        sockets,
        &c.cfg.dns,
        &c.node,
        registry,
        &c.health,
        c.shutdown.clone(),
        Default::default(),
    )
    .context("starting the DNS proxy")?;
    dns.follow_config(c.config.clone(), c.shutdown.clone());
    if c.cfg.dns.register_leases {
        dns.follow_leases(c.bus.subscribe("dns-zone", 4096), c.shutdown.clone());
    }
    *routes = std::mem::take(routes).merge(dns.routes(c.config.clone()));
    Ok(dns)
}

fn start_vips(
    c: &Common,
    sockets: crate::vip::PacketSockets,
    role: watch::Receiver<ServiceRole>,
    board: &VipBoard,
    registry: &mut Registry,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<VipClaims> {
    let ctx = crate::vip::VipContext {
        node: c.node.clone(),
        bus: c.bus.clone(),
        health: c.health.clone(),
        board: board.clone(),
        shutdown: c.shutdown.clone(),
        metrics: crate::vip::VipMetrics::register(registry),
        role,
    };
    crate::vip::manager::start(&c.cfg.hooks.vips, sockets, ctx, tasks)
        .context("starting the VIP manager (netlink)")
}

/// The DNS zone's names for active leases, read from the store when the zone is rebuilt.
fn feed_zone(dns: &DnsServer, store: Arc<LeaseStore>) {
    dns.set_lease_source(Arc::new(move || {
        let now = crate::events::now_ms() / 1000;
        store
            .index()
            .iter()
            .filter(|l| l.state == crate::lease::LeaseState::Active && l.expiry > now)
            .filter_map(|l| Some((l.ip, l.hostname.clone()?)))
            .collect()
    }));
}

#[allow(clippy::too_many_arguments)]
fn start_ha(
    c: &Common,
    role: watch::Sender<ServiceRole>,
    vip_claims: VipClaims,
    lease_log: Option<Arc<dyn LeaseLog>>,
    replication: ReplicationRx,
    dns_warm: Option<crate::dns::WarmLink>,
    resync_marker: Option<std::path::PathBuf>,
    registry: &mut Registry,
    routes: &mut axum::Router,
) -> HaView {
    let params = crate::ha::node::HaParams {
        node: c.node.clone(),
        config: c.cfg.clone(),
        bus: c.bus.clone(),
        health: c.health.clone(),
        role,
        vip_claims,
        lease_log,
        replication: Some(replication),
        updates: c.config.clone(),
        dns_warm,
        resync_marker,
        shutdown: c.shutdown.clone(),
    };
    let h = crate::ha::node::spawn(params, registry);
    *routes = std::mem::take(routes).merge(crate::api::ha::routes(h.clone()));
    HaView {
        status: h.status.clone(),
        serving: h.serving.clone(),
        serve_lease: h.serve_lease.clone(),
        handle: Some(h),
        _standalone: None,
    }
}

/// A standalone node serves: its VIPs are claimed at once. Scripts and webhooks learn it as
/// they would from HA (the old `floating-ip.sh` route relies on that event).
fn serve_standalone(c: &Common, role_tx: watch::Sender<ServiceRole>) -> HaView {
    let role = ServiceRole::standalone();
    role_tx.send_replace(role);
    c.bus.publish(Event::new(
        EventKind::HaFailover,
        c.node.clone(),
        EventData::Ha(HaEvent {
            old_state: HaState::Standby,
            new_state: role.state,
            reason: "HA disabled: serving standalone".into(),
            role: c.cfg.ha.role,
            peer_state: None,
            epoch: role.epoch,
        }),
    ));
    let (status_tx, status) = watch::channel(HaStatus::standalone(&c.node, c.cfg.ha.role.as_str()));
    let (serving_tx, serving) = watch::channel(HaState::Active);
    HaView {
        handle: None,
        status,
        serving,
        serve_lease: crate::ha::role::ServeLease::always(),
        _standalone: Some((status_tx, serving_tx)),
    }
}

#[allow(clippy::too_many_arguments)]
fn start_dhcp(
    c: &Common,
    prepared: &mut Prepared,
    store: Arc<LeaseStore>,
    ha: &HaView,
    replication: Option<crate::lease::Replication>,
    registry: &mut Registry,
    routes: &mut axum::Router,
    tasks: &mut JoinSet<()>,
) {
    let metrics = crate::dhcp::metrics::DhcpMetrics::default();
    metrics.register(registry);
    let pools = crate::dhcp::pools::PoolBoard::default();
    *routes = std::mem::take(routes).merge(crate::dhcp::api::router(store.clone(), pools.clone()));
    let (clear_tx, clears) = mpsc::channel(16);
    *routes = std::mem::take(routes).merge(crate::conflict::api::router(store.clone(), clear_tx));
    let conflicts = start_prober(c, prepared, registry);
    let server = crate::dhcp::server::DhcpServer {
        sockets: std::mem::take(&mut prepared.dhcp_sockets),
        config: c.cfg.clone(),
        updates: c.config.clone(),
        store,
        ha: ha.serving.clone(),
        serve_lease: ha.serve_lease.clone(),
        replication,
        bus: c.bus.clone(),
        node: c.node.clone(),
        metrics,
        pools,
        progress: c.health.worker("dhcp", Duration::from_secs(5)),
        shutdown: c.shutdown.clone(),
        conflicts,
        conflict_clears: Some(clears),
    };
    tasks.spawn(async move {
        if let Err(e) = server.run().await {
            tracing::error!("DHCP server stopped: {e}");
        }
    });
    let subnets = c.cfg.subnets.len();
    let port = c.cfg.server.dhcp_port;
    tracing::info!(
        port,
        subnets,
        "DHCP serving {subnets} subnets on UDP port {port}"
    );
}

/// The conflict prober on the sockets `prepare` opened; None when detection is off (or its
/// sockets could not be registered with the runtime: DHCP then serves unchecked, said once).
fn start_prober(
    c: &Common,
    prepared: &mut Prepared,
    registry: &mut Registry,
) -> Option<(
    crate::dhcp::probe::Probing,
    mpsc::Receiver<crate::conflict::Sighting>,
)> {
    let cd = &c.cfg.conflict_detection;
    let sockets = prepared.conflict_sockets.take()?;
    let metrics = crate::conflict::ConflictMetrics::default();
    metrics.register(registry);
    let times = crate::conflict::ProbeTimes {
        timeout: cd.probe_timeout.0,
        cache_ttl: cd.probe_cache_ttl.0,
    };
    match crate::conflict::Prober::start(sockets, times, metrics.clone(), c.shutdown.clone()) {
        Ok((prober, sightings)) => {
            tracing::info!(
                timeout = %cd.probe_timeout,
                "conflict detection on: addresses are probed for {} before they are offered",
                cd.probe_timeout
            );
            Some((
                crate::dhcp::probe::Probing {
                    prober,
                    hold: cd.conflict_hold_time,
                    max_probes: cd.max_probes_per_discover,
                    metrics,
                },
                sightings,
            ))
        }
        Err(e) => {
            tracing::error!("conflict detection off: its sockets cannot be used: {e}");
            None
        }
    }
}

fn start_api(
    c: &Common,
    listener: std::net::TcpListener,
    ha: &HaView,
    vips: VipBoard,
    registry: Registry,
    routes: axum::Router,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener).context("API listener")?;
    let addr = listener.local_addr().ok();
    let state = crate::api::ApiState {
        node: c.node.clone(),
        health: c.health.clone(),
        ha: ha.status.clone(),
        vips,
        registry: Arc::new(registry),
        bus: c.bus.clone(),
        shutdown: c.shutdown.clone(),
        config: c.config.clone(),
    };
    let app = crate::api::router(state, routes);
    let tls = match (&c.cfg.api.tls_cert, &c.cfg.api.tls_key) {
        (Some(cert), Some(key)) => {
            let loaded = crate::api::tls::load(cert, key).context("[api] tls_cert / tls_key")?;
            let cert = crate::api::tls::ApiCert::new(loaded);
            let server = cert.server_config().context("TLS for the API")?;
            cert.follow_reloads(c.config.clone(), c.shutdown.clone());
            Some(Arc::new(server))
        }
        _ => None,
    };
    let https = tls.is_some();
    let sd = c.shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = crate::api::serve(listener, app, tls, sd).await {
            tracing::error!("API server stopped: {e}");
        }
    });
    if let Some(a) = addr {
        let scheme = if https { "https" } else { "http" };
        tracing::info!(listen = %a, tls = https, "API listening on {scheme}://{a}");
    }
    Ok(())
}

/// Hands the service to the standby first (it claims the VIP before we release it), lets
/// the VIP go while DNS still answers, stops every task, then lets the hooks see the
/// shutdown's events and finish running scripts.
async fn stop(
    c: &Common,
    ha: Option<&HaHandle>,
    vip_claims: &VipClaims,
    mut tasks: JoinSet<()>,
    hooks: crate::hooks::Hooks,
) {
    tracing::info!("shutting down");
    if let Some(h) = ha {
        let limit =
            c.cfg.ha.failover_timeout.0.max(Duration::from_secs(1)) + Duration::from_secs(1);
        h.shutdown(limit).await;
        // A VIP handed to the peer stays here, unannounced, for `YIELD_LINGER`: clients
        // whose ARP entry still names this node are answered until the peer's announcement
        // moves them. Cancelling every task at once cut that linger short (the address
        // went with the shutdown, DNS maybe first), so the tasks stop only once it is gone.
        let linger = crate::vip::claim::YIELD_LINGER + Duration::from_millis(250);
        if !vip_claims.wait_released(linger).await {
            tracing::debug!(
                "a floating IP was still held {linger:?} after the handoff; releasing it now"
            );
        }
    }
    c.shutdown.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 5s; exiting anyway");
    }
    // Now that the VIP is released, the scripts and webhooks get the shutdown's events
    // (ha.failover of the handoff, vip.released) and may finish running ones.
    hooks
        .finish(
            c.cfg
                .hooks
                .script_timeout
                .get()
                .min(Duration::from_secs(10)),
        )
        .await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopped");
}

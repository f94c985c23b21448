//! Start-up order, signals and shutdown.
//!
//! Order, and why: config is valid → privileged sockets open ([`prepare`], still root or with
//! file capabilities) → capabilities dropped to CAP_NET_ADMIN (in `main`, single-threaded) →
//! runtime and tasks start ([`run`]) → READY to systemd → wait for a signal → hand off →
//! release the VIP → exit. Every task selects on one [`CancellationToken`], so shutdown is a
//! broadcast and nothing is left half-running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::events::EventBus;
use crate::ha::HaStatus;
use crate::health::Health;
use crate::privileges::explain_bind_error;
use crate::vip::VipBoard;

/// Sockets opened while the process still has its privileges.
pub struct Prepared {
    pub config: Arc<Config>,
    pub config_path: PathBuf,
    pub api: Option<std::net::TcpListener>,
    pub dns: Option<crate::dns::DnsSockets>,
    /// The VIP manager's AF_PACKET sockets (GARP out, ARP in), when `[[hooks.vip]]` exist.
    pub vip_sockets: Option<crate::vip::PacketSockets>,
    /// DHCP UDP sockets (port 67 needs CAP_NET_BIND_SERVICE, binding to a device may need
    /// CAP_NET_RAW); empty when no subnet is configured.
    pub dhcp_sockets: Vec<std::net::UdpSocket>,
}

/// Opens every socket that needs a capability the process will drop.
pub fn prepare(config: Config, config_path: PathBuf) -> anyhow::Result<Prepared> {
    let api = match config.api_listen() {
        Some(addr) => Some(bind_tcp(addr).map_err(|e| {
            anyhow::anyhow!(explain_bind_error(
                &e,
                &format!("API listener on {addr}"),
                "CAP_NET_BIND_SERVICE"
            ))
        })?),
        None => None,
    };
    let dns = if config.dns.enabled {
        Some(crate::dns::bind(&config.dns)?)
    } else {
        None
    };
    let vip_sockets = if config.hooks.vips.is_empty() {
        None
    } else {
        Some(crate::vip::PacketSockets::open().map_err(|e| {
            anyhow::anyhow!(explain_bind_error(
                &e,
                "packet socket for gratuitous ARP ([[hooks.vip]])",
                "CAP_NET_RAW"
            ))
        })?)
    };
    let dhcp_sockets = crate::dhcp::server::open_sockets(&config).map_err(|e| {
        anyhow::anyhow!(explain_bind_error(
            &e,
            &format!("DHCP socket on UDP port {}", config.server.dhcp_port),
            "CAP_NET_BIND_SERVICE"
        ))
    })?;
    Ok(Prepared {
        config: Arc::new(config),
        config_path,
        api,
        dns,
        vip_sockets,
        dhcp_sockets,
    })
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // A restarted daemon must be able to bind while old connections sit in TIME_WAIT.
    sock.set_reuse_address(true)?;
    // Accepted connections inherit TCP_NODELAY (Linux). The HA peer link rides on this
    // listener: without it the accepting side's small frames (lease acks a DHCPACK waits
    // for) sit behind Nagle until the other side's delayed ACK.
    sock.set_nodelay(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Builds the runtime and runs the daemon until SIGTERM/SIGINT.
pub fn run(prepared: Prepared) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("athena-worker")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(prepared))
}

async fn serve(mut prepared: Prepared) -> anyhow::Result<()> {
    let cfg = prepared.config.clone();
    let node = cfg.node_name();
    let shutdown = CancellationToken::new();
    let bus = EventBus::new();
    let health = Health::new();
    let (config_tx, config_rx) = watch::channel(cfg.clone());
    let mut registry = Registry::with_prefix("athena");

    let (_ha_tx, mut ha_rx) = watch::channel(HaStatus::standalone(&node, cfg.ha.role.as_str()));
    // The serving gate DHCP follows: always ACTIVE standalone, the HA node's state with HA.
    let (_serving_tx, mut serving) = watch::channel(crate::ha::HaState::Active);
    // DHCP calls `replication.replicate` before each DHCPACK; HA owns the receiving end.
    let (replication, replication_rx) = crate::lease::replication_channel(1024);
    let vips: VipBoard = Default::default();
    // Who serves, for the VIP: written by HA (or once below, standalone), read by the VIP
    // workers. Made before both, so neither start-up order can lose a value.
    let (role_tx, role_rx) = crate::ha::role::channel();

    let mut extra = axum::Router::new();
    let mut dns_server = None;
    if let Some(sockets) = prepared.dns.take() {
        let dns = crate::dns::DnsServer::start(
            sockets,
            &cfg.dns,
            &node,
            &mut registry,
            &health,
            shutdown.clone(),
            Default::default(),
        )
        .context("starting the DNS proxy")?;
        dns.follow_config(config_rx.clone(), shutdown.clone());
        if cfg.dns.register_leases {
            dns.follow_leases(bus.subscribe("dns-zone", 4096), shutdown.clone());
        }
        extra = extra.merge(dns.routes(config_rx.clone()));
        dns_server = Some(dns);
    }

    let mut tasks = tokio::task::JoinSet::new();
    // VIP workers and hooks start before anything can publish an event they must see.
    let vip_claims = match prepared.vip_sockets.take() {
        Some(sockets) => Some(
            crate::vip::manager::start(
                &cfg.hooks.vips,
                sockets,
                crate::vip::VipContext {
                    node: node.clone(),
                    bus: bus.clone(),
                    health: health.clone(),
                    board: vips.clone(),
                    shutdown: shutdown.clone(),
                    metrics: crate::vip::VipMetrics::register(&mut registry),
                    role: role_rx,
                },
                &mut tasks,
            )
            .context("starting the VIP manager (netlink)")?,
        ),
        None => None,
    };
    let vip_claims = vip_claims.unwrap_or_default();
    // The hooks get their own stop: they outlive the other tasks at shutdown (see below).
    let hooks = crate::hooks::start(crate::hooks::HookContext {
        bus: bus.clone(),
        shutdown: CancellationToken::new(),
        metrics: crate::hooks::HookMetrics::register(&mut registry),
        config: config_rx.clone(),
    });
    // The lease store, opened when DHCP serves: DHCP writes it, HA replicates it (LeaseLog).
    let lease_store: Option<Arc<crate::lease::LeaseStore>> = if prepared.dhcp_sockets.is_empty() {
        None
    } else {
        let store = crate::lease::LeaseStore::open(&cfg.server.lease_db)
            .context("opening the lease database")?;
        store.register_metrics(&mut registry);
        if cfg.ha.enabled {
            store.set_batch_target(crate::lease::store::BATCH_TARGET_REPLICATED);
        }
        Some(store)
    };
    if let (Some(dns), Some(store), true) = (&dns_server, &lease_store, cfg.dns.register_leases) {
        let store = store.clone();
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
    let lease_log: Option<Arc<dyn crate::lease::LeaseLog>> = lease_store
        .clone()
        .map(|s| s as Arc<dyn crate::lease::LeaseLog>);
    // HA starts after the hooks (they must see its first ha.failover; the VIP follows the
    // role watch, which keeps the latest value whenever it starts) and before DHCP (which follows its serving gate) and the API (its routes and metrics).
    let ha = if cfg.ha.enabled {
        let h = crate::ha::node::spawn(
            crate::ha::node::HaParams {
                node: node.clone(),
                config: cfg.clone(),
                bus: bus.clone(),
                health: health.clone(),
                role: role_tx,
                vip_claims,
                lease_log: lease_log.clone(),
                replication: Some(replication_rx),
                shutdown: shutdown.clone(),
            },
            &mut registry,
        );
        ha_rx = h.status.clone();
        serving = h.serving.clone();
        extra = extra.merge(h.router());
        Some(h)
    } else {
        drop(replication_rx);
        // A standalone node serves: its VIPs are claimed at once. Scripts and webhooks learn
        // it as they would from HA (the old `floating-ip.sh` route relies on that event).
        let role = crate::ha::role::ServiceRole::standalone();
        role_tx.send_replace(role);
        bus.publish(crate::events::Event::new(
            crate::events::EventKind::HaFailover,
            node.clone(),
            crate::events::EventData::Ha(crate::events::HaEvent {
                old_state: crate::ha::HaState::Standby,
                new_state: role.state,
                reason: "HA disabled: serving standalone".into(),
                role: cfg.ha.role,
                peer_state: None,
                epoch: role.epoch,
            }),
        ));
        None
    };
    if let Some(store) = lease_store.clone() {
        let metrics = crate::dhcp::server::DhcpMetrics::default();
        metrics.register(&mut registry);
        extra = extra.merge(crate::dhcp::api::router(store.clone()));
        let server = crate::dhcp::server::DhcpServer {
            sockets: std::mem::take(&mut prepared.dhcp_sockets),
            config: cfg.clone(),
            store,
            ha: serving.clone(),
            // Standalone there is no peer to wait for.
            replication: ha.as_ref().map(|_| replication.clone()),
            bus: bus.clone(),
            node: node.clone(),
            metrics,
            progress: health.worker("dhcp", Duration::from_secs(5)),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!("DHCP server stopped: {e}");
            }
        });
        tracing::info!(
            port = cfg.server.dhcp_port,
            subnets = cfg.subnets.len(),
            "DHCP serving {} subnets on UDP port {}",
            cfg.subnets.len(),
            cfg.server.dhcp_port
        );
    }
    if let Some(listener) = prepared.api {
        let listener = tokio::net::TcpListener::from_std(listener).context("API listener")?;
        let addr = listener.local_addr().ok();
        let state = crate::api::ApiState {
            node: node.clone(),
            health: health.clone(),
            ha: ha_rx.clone(),
            vips: vips.clone(),
            registry: Arc::new(std::mem::take(&mut registry)),
            bus: bus.clone(),
            shutdown: shutdown.clone(),
            config: config_rx.clone(),
        };
        let app = crate::api::router(state, extra);
        let sd = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::api::serve(listener, app, sd).await {
                tracing::error!("API server stopped: {e}");
            }
        });
        if let Some(a) = addr {
            tracing::info!(listen = %a, "API listening on {a}");
        }
    }

    tracing::info!(
        node = %node,
        version = env!("CARGO_PKG_VERSION"),
        ha = cfg.ha.enabled,
        "athena-dhcpd {} started on {node} ({})",
        env!("CARGO_PKG_VERSION"),
        if cfg.ha.enabled { format!("HA {}", cfg.ha.role) } else { "standalone".to_string() }
    );
    notify_ready();
    spawn_watchdog(health.clone(), shutdown.clone());

    wait_for_signals(&prepared.config_path, &config_tx, &shutdown).await;
    tracing::info!("shutting down");
    if let Some(h) = &ha {
        // Hand the service to the standby first: it claims the VIP before we release it.
        h.shutdown(cfg.ha.failover_timeout.0.max(Duration::from_secs(1)) + Duration::from_secs(1))
            .await;
    }
    shutdown.cancel();
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
        .finish(cfg.hooks.script_timeout.get().min(Duration::from_secs(10)))
        .await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopped");
    Ok(())
}

fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!("sd_notify READY failed: {e}");
        }
    }
}

/// Pings systemd's watchdog at half its interval, but only while the workers make progress:
/// a wedged daemon must be restarted, not kept alive by a healthy timer.
fn spawn_watchdog(health: Health, shutdown: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let stuck = health.workers_stuck();
                    if stuck.is_empty() {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    } else {
                        tracing::error!(workers = ?stuck, "workers stuck, withholding the systemd watchdog ping");
                    }
                }
            }
        }
    });
}

async fn wait_for_signals(
    path: &std::path::Path,
    config_tx: &watch::Sender<Arc<Config>>,
    shutdown: &CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return }
            _ = int.recv() => { tracing::info!("SIGINT received"); return }
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => reload(path, config_tx),
        }
    }
}

/// SIGHUP: re-reads the file; hooks and DNS records follow the new config at once, anything
/// else that changed is named so the admin knows a restart is needed.
fn reload(path: &std::path::Path, config_tx: &watch::Sender<Arc<Config>>) {
    let new = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, keeping the running config: {e}");
            return;
        }
    };
    let old = config_tx.borrow().clone();
    let needs_restart = restart_sections(&old, &new);
    if needs_restart.is_empty() {
        tracing::info!("config reloaded from {}", path.display());
    } else {
        tracing::warn!(
            sections = ?needs_restart,
            "config reloaded from {}; hooks and DNS records applied; changes to {} take effect after a restart",
            path.display(),
            needs_restart.join(", ")
        );
    }
    let _ = config_tx.send(Arc::new(new));
}

/// The sections whose changes a reload cannot apply.
pub fn restart_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if j(&old.server) != j(&new.server) {
        out.push("[server]");
    }
    if j(&old.api) != j(&new.api) {
        out.push("[api]");
    }
    if j(&old.ha) != j(&new.ha) {
        out.push("[ha]");
    }
    let (mut od, mut nd) = (old.dns.clone(), new.dns.clone());
    od.records.clear();
    nd.records.clear();
    if j(&od) != j(&nd) {
        out.push("[dns]");
    }
    if j(&old.subnets) != j(&new.subnets) || j(&old.defaults) != j(&new.defaults) {
        out.push("[[subnet]]/[defaults]");
    }
    if j(&old.hooks.vips) != j(&new.hooks.vips) {
        out.push("[[hooks.vip]]");
    }
    out
}

fn j<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
